--- Predicates on plain Lua values, shared by the modules that check their
-- arguments (task, strategies, client).
local M = {}

--- Whether `v` can be called: a function, or a value whose metatable has
-- `__call`.
function M.is_callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
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
    if t[i] == nil then return nil end
  end
  return n
end

return M
