--- Predicates and argument checks on plain Lua values, shared by the
-- modules of the public API. Every check raises an `invalid` error object
-- whose message names the argument, never a plain string.
local errors = require("retry.errors")

local M = {}

local invalid = errors.invalid

--- Whether `v` can be called: a function, or a value whose metatable has
-- `__call`.
function M.is_callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

--- The length of `t` when it is a proper sequence (only the keys 1..n; 0 for
-- an empty table), else nil.
function M.list_length(t)
  if type(t) ~= "table" then return nil end
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return nil end
    n = n + 1
  end
  for i = 1, n do
    if rawget(t, i) == nil then return nil end
  end
  return n
end

--- Raise the error of a method called on something that is not its object
-- (a dot for a colon): "who:method: expected a Class as self, got X (call
-- it as var:method<args>)". The caller tests self itself, so that a good
-- call pays for no more than its test.
function M.not_self(self, method, who, class, var, args)
  invalid(who .. ":" .. method .. ": expected a " .. class .. " as self, got "
    .. M.describe(self) .. " (call it as " .. var .. ":" .. method .. args
    .. ")")
end

--- A short rendering of a value for error messages: strings quoted, numbers
-- as they are, other values by type (or `__name`).
function M.describe(v)
  local t = type(v)
  if t == "string" then
    if #v > 40 then v = v:sub(1, 37) .. "..." end
    return string.format("%q", v)
  end
  -- NaN prints as "-nan" or "nan" by its sign bit, which says nothing.
  if v ~= v then return "nan" end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  local mt = getmetatable(v)
  local name = type(mt) == "table" and rawget(mt, "__name")
  return "a " .. (type(name) == "string" and name or t)
end

--- `v` must be nil or of Lua type `expected`.
function M.check_type(v, expected, name)
  if v ~= nil and type(v) ~= expected then
    invalid(name .. " must be a " .. expected .. ", got " .. M.describe(v))
  end
  return v
end

--- `v` must be nil or a number of seconds >= 0; infinity only when
-- `allow_huge` (where it means "no limit").
function M.check_seconds(v, name, allow_huge)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v < 0
      or (not allow_huge and v == math.huge) then
    invalid(name .. " must be a " .. (allow_huge and "" or "finite ")
      .. "number of seconds >= 0, got " .. M.describe(v))
  end
  return v
end

--- `v` must be nil or an integer >= `min` (an integral float is accepted);
-- `math.huge` is accepted when `allow_huge`.
function M.check_integer(v, name, min, allow_huge)
  if v == nil then return nil end
  if allow_huge and v == math.huge then return v end
  local n = type(v) == "number" and math.tointeger(v)
  if not n or n < min then
    invalid(name .. " must be an integer >= " .. min
      .. (allow_huge and " (or math.huge)" or "") .. ", got " .. M.describe(v))
  end
  return n
end

--- Every key of table `t` must be in the set `allowed`.
function M.check_keys(t, allowed, what)
  for k in pairs(t) do
    if not allowed[k] then
      invalid(what .. ": unknown option " .. M.describe(k))
    end
  end
end

--- `v` must name a file that can be read and is not empty (a CA bundle).
function M.check_readable(v, name)
  M.check_string(v, name)
  local f = io.open(v, "rb")
  local first = f and f:read(1)
  if f then f:close() end
  if first == nil then
    invalid(name .. " " .. M.describe(v) .. " cannot be read (missing, "
      .. "empty or a directory)")
  end
  return v
end

--- `v` must be a non-empty string.
function M.check_string(v, name)
  if type(v) ~= "string" or v == "" then
    invalid(name .. " must be a non-empty string, got " .. M.describe(v))
  end
  return v
end

return M
