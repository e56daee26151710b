--- Error objects raised by the retry module (contract section 5).
-- Every error is a table with `kind` and `message`, plus `method`, `url`,
-- `attempt`, and `status`/`response` for status errors or `curl_code` where
-- libcurl reported one. `tostring(err)` gives a one-line description.
local M = {}

local Error = { __name = "retry.Error" }
Error.__index = Error

--- The kinds an error can have.
M.KINDS = {
  connect = true, dns = true, timeout = true, network = true, tls = true,
  status = true, cancelled = true, invalid = true,
}

--- Transport kinds: the default `exceptions` of a strategy, and what the
-- word "transport" stands for in an `exceptions` list.
M.TRANSPORT = { "connect", "dns", "timeout", "network" }

function Error:__tostring()
  local where = ""
  if self.method and self.url then
    where = " (" .. self.method .. " " .. self.url
    if self.attempt then where = where .. ", attempt " .. self.attempt end
    where = where .. ")"
  end
  return "retry." .. self.kind .. " error: " .. tostring(self.message) .. where
end

--- Make an error of `kind` with `message`; `fields` (optional) are copied in.
function M.new(kind, message, fields)
  assert(M.KINDS[kind], "unknown error kind")
  local e = setmetatable({ kind = kind, message = message }, Error)
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return e
end

--- Whether `e` is an error of this module (of `kind`, when given).
function M.is_error(e, kind)
  if getmetatable(e) ~= Error then return false end
  return kind == nil or e.kind == kind
end

--- Raise an `invalid` error for a bad argument, found before sending.
function M.invalid(message, level)
  error(M.new("invalid", message), (level or 1) + 1)
end

return M
