--- Assertions on the module's error objects, shared by the specs: a check
-- that something "raised" is worth little unless it names the kind.
local luassert = require("luassert")
local retry = require("retry")

local M = {}

--- Call f(...), assert it raised an error object of `kind`; return it.
function M.raises(kind, f, ...)
  local ok, err = pcall(f, ...)
  luassert.is_false(ok, "expected a " .. kind .. " error; the call succeeded")
  luassert.is_true(retry.is_error(err),
    "expected a retry error object of kind " .. kind .. ", got "
    .. tostring(err))
  luassert.equal(kind, err.kind, tostring(err))
  return err
end

--- Call f(...), assert it raised an `invalid` error whose message matches
-- `pattern` (when given) and carries no file:line; return it.
function M.invalid(pattern, f, ...)
  local err = M.raises("invalid", f, ...)
  if pattern then luassert.matches(pattern, err.message) end
  luassert.is_nil(err.message:match("^[%w_/%.%-]+%.lua:%d+:"),
    "an invalid error names no file:line: " .. err.message)
  return err
end

return M
