--- Error objects raised by the retry module (contract section 5).
-- Every error is a table with `kind` and `message`, plus `method`, `url`,
-- `attempt`, and `status`/`response` for status errors or `curl_code` where
-- libcurl reported one. `tostring(err)` gives a one-line description. The C
-- core raises the same objects: the metatable is shared with it.
local core = require("retry.core")

local M = {}

local Error = core.error_metatable
Error.__index = Error

--- The kinds an error can have.
M.KINDS = {
  connect = true, dns = true, timeout = true, network = true, tls = true,
  status = true, cancelled = true, protocol = true, redirect = true,
  too_large = true, invalid = true, circuit_open = true,
}

--- Transport kinds: the default `exceptions` of a strategy, and what the
-- word "transport" stands for in an `exceptions` list.
M.TRANSPORT = { "connect", "dns", "timeout", "network" }

-- A URL for messages: credentials in it are not printed.
local function redact(url)
  return (tostring(url):gsub("^(%a[%w+.-]*://)[^/?#@]*@", "%1***@"))
end

function Error:__tostring()
  local where = ""
  local method, url = rawget(self, "method"), rawget(self, "url")
  if method and url then
    where = " (" .. tostring(method) .. " " .. redact(url)
    local attempt = rawget(self, "attempt")
    if attempt then where = where .. ", attempt " .. tostring(attempt) end
    where = where .. ")"
  end
  return "retry." .. tostring(rawget(self, "kind")) .. " error: "
    .. tostring(rawget(self, "message")) .. where
end

--- Raise an `invalid` error for a bad argument, found before sending.
-- The error is a table, so Lua adds no file:line to it; `level` is kept
-- for symmetry with `error`.
function M.invalid(message)
  error(setmetatable({ kind = "invalid", message = message }, Error), 0)
end

--- Make an error of `kind` with `message`; `fields` (optional) are copied in.
function M.new(kind, message, fields)
  if not M.KINDS[kind] then
    M.invalid("retry.errors.new: unknown error kind " .. tostring(kind))
  end
  if type(message) ~= "string" then
    M.invalid("retry.errors.new: message must be a string, got "
      .. type(message))
  end
  if fields ~= nil and type(fields) ~= "table" then
    M.invalid("retry.errors.new: fields must be a table, got " .. type(fields))
  end
  local e = setmetatable({ kind = kind, message = message }, Error)
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return e
end

--- Whether `e` is an error of this module (of `kind`, when given).
function M.is_error(e, kind)
  if getmetatable(e) ~= Error then return false end
  if kind ~= nil and type(kind) ~= "string" then
    M.invalid("retry.is_error: kind must be a string, got " .. type(kind))
  end
  return kind == nil or e.kind == kind
end

return M
