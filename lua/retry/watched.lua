--- Tables that see every write made to them: a RetryClient, whose fields
-- a script may change at any time and which are checked before each
-- request. Such an object is an empty proxy whose metatable reads from a
-- store and sends every write through __newindex, which bumps the store's
-- version; the checks then run again only when the version moved, one
-- comparison a request instead of every field, or when rawset gave the
-- proxy a field of its own (next finds it). pairs sees through a proxy;
-- rawget and next see an empty table.
local M = {}

local VERSION = {} -- the key of a store's version
local HIDDEN = { [VERSION] = true } -- store keys pairs does not show
local STORE = setmetatable({}, { __mode = "k" }) -- proxy -> its store

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

-- A table given an object's metatable by a script (a copy) has no store:
-- it is a plain table, written and listed as one.
local function proxy_pairs(proxy)
  return store_next, STORE[proxy] or proxy, nil
end

local function object_write(proxy, k, v)
  local store = STORE[proxy]
  if store == nil then return rawset(proxy, k, v) end
  store[k] = v
  store[VERSION] = store[VERSION] + 1
end

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

--- proxy -> the store behind it, for reading only: the checks before each
-- request index it rather than call a function.
M.stores = STORE

--- The key of an object's version in its store: it moves at every write.
M.VERSION = VERSION

return M
