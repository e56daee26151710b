--- Tables that see every write made to them: strategy and client objects,
-- whose fields a script may change at any time and which are checked
-- before each request. Such an object is an empty proxy whose metatable
-- reads from a store and sends every write through __newindex, which
-- bumps the store's version; its lists are proxies of the same kind whose
-- writes bump the version of the object that holds them. A check then
-- runs again only when the version moved: one comparison a request
-- instead of every field. pairs, ipairs, #, table.concat and table.unpack
-- see through a proxy; rawget, rawlen and next see an empty table.
local M = {}

local VERSION = {} -- the key of a store's version
local HIDDEN = { [VERSION] = true } -- store keys pairs does not show
local STORE = setmetatable({}, { __mode = "k" }) -- proxy -> its store
local OWNER = setmetatable({}, { __mode = "k" }) -- list proxy -> the store
-- of the object it was made for

--- A new key of a store that pairs does not show (a cache of the code
-- that owns the object, not one of its fields).
function M.private()
  local key = {}
  HIDDEN[key] = true
  return key
end

local function store_next(store, k)
  local nk, nv = next(store, k)
  while HIDDEN[nk] do nk, nv = next(store, nk) end
  return nk, nv
end

local function proxy_pairs(proxy) return store_next, STORE[proxy], nil end

local function object_write(proxy, k, v)
  local store = STORE[proxy]
  store[k] = v
  store[VERSION] = store[VERSION] + 1
end

local function list_write(proxy, k, v)
  STORE[proxy][k] = v
  local owner = OWNER[proxy]
  owner[VERSION] = owner[VERSION] + 1
end

local function list_len(proxy) return #STORE[proxy] end

--- The object whose fields are those of `store`, with the metatable fields
-- of `meta` (__name, __tostring, __close, ...) besides its own.
function M.object(store, meta)
  store[VERSION] = 0
  meta.__index, meta.__newindex, meta.__pairs = store, object_write,
    proxy_pairs
  local proxy = setmetatable({}, meta)
  STORE[proxy] = store
  return proxy
end

--- A list over `items` (a table of its own) held by the object whose store
-- is `owner`: a write to the list counts as a write to that object.
function M.list(items, owner)
  local proxy = setmetatable({}, { __index = items, __newindex = list_write,
    __len = list_len, __pairs = proxy_pairs })
  STORE[proxy], OWNER[proxy] = items, owner
  return proxy
end

--- proxy -> the store behind it (an object or a list), for reading only:
-- the checks before each request index it rather than call a function.
M.stores = STORE

--- The store of the object a list proxy was made for, or nil.
function M.owner(v) return OWNER[v] end

--- The plain table behind a list proxy, or v itself.
function M.raw_list(v)
  return OWNER[v] and STORE[v] or v
end

--- The key of an object's version in its store: it moves at every write.
M.VERSION = VERSION

return M
