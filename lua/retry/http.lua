--- One HTTP attempt: turns Lua request options into what the C core sends,
-- and the core's outcome into a Response or an error object. The core makes
-- the checks on what goes on the wire (method token, URL and header bytes);
-- this file checks the shape of the options.
local core = require("retry.core")
local errors = require("retry.errors")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local check_seconds, check_integer = values.check_seconds, values.check_integer

local cjson -- loaded on first use: scripts that never touch JSON skip it

local function json()
  if not cjson then cjson = require("cjson") end
  return cjson
end

M.METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
  "TRACE", "CONNECT" }

--- The options of one request (`retry.request`'s third argument).
M.OPTIONS = { headers = true, params = true, data = true, json = true,
  auth = true, timeout = true, connect_timeout = true, max_redirects = true,
  max_body_size = true, ca_file = true, verify_tls = true }

local function percent_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- `what`, and the params key `key` when the value is one's, in an error.
local function named(what, key)
  if key == nil then return what end
  return what .. " for " .. describe(key)
end

local function scalar(v, what, key)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    -- 2.0 goes out as 2, as lua-cjson's numbers are meant (lua_core.c).
    local text, bad = core.number_text(v)
    if text == nil then
      invalid(named(what, key) .. " " .. bad .. ", got " .. describe(v))
    end
    return text
  end
  if t == "boolean" then return tostring(v) end
  invalid(named(what, key) .. " must be a string, number or boolean, got "
    .. describe(v))
end

--- Encode a params table: `{a = 1, b = {"x", "y"}}` (keys sorted, list
-- values repeated) or a list of pairs `{{"a", 1}, {"a", 2}}`.
function M.encode_query(params)
  if type(params) ~= "table" then
    invalid("params must be a table, got " .. describe(params))
  end
  local parts = {}
  local function add(k, v)
    parts[#parts + 1] = percent_encode(scalar(k, "params key")) .. "="
      .. percent_encode(scalar(v, "params value", k))
  end
  if #params > 0 then
    if values.list_length(params) == nil then
      invalid("params must be either a list of {name, value} pairs or a "
        .. "table of names, not both")
    end
    for _, pair in ipairs(params) do
      if type(pair) ~= "table" or values.list_length(pair) ~= 2 then
        invalid("params as a list must hold {name, value} pairs, got "
          .. describe(pair))
      end
      add(pair[1], pair[2])
    end
    return table.concat(parts, "&")
  end
  local keys = {}
  for k in pairs(params) do
    scalar(k, "params key")
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local v = params[k]
    if type(v) == "table" then
      if values.list_length(v) == nil then
        invalid("params value for " .. describe(k) .. " must be a string, "
          .. "number, boolean or a list of them, got " .. describe(v))
      end
      for _, item in ipairs(v) do add(k, item) end
    else
      add(k, v)
    end
  end
  return table.concat(parts, "&")
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = { (n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63 }
    out[#out + 1] = B64:sub(k[1] + 1, k[1] + 1) .. B64:sub(k[2] + 1, k[2] + 1)
      .. (b and B64:sub(k[3] + 1, k[3] + 1) or "=")
      .. (c and B64:sub(k[4] + 1, k[4] + 1) or "=")
  end
  return table.concat(out)
end
M.base64 = base64

--- Whether the headers table has `name` (compared case-insensitively).
function M.has_header(headers, name)
  name = name:lower()
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

--- Check the shape of request options (keys, types, ranges); raises an
-- `invalid` error naming the option. `what` prefixes the messages.
function M.check_options(opts, allowed, what)
  if type(opts) ~= "table" then
    invalid(what .. " must be a table, got " .. describe(opts))
  end
  values.check_keys(opts, allowed, what)
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then
      invalid("headers must be a table, got " .. describe(opts.headers))
    end
    for k, v in pairs(opts.headers) do
      if type(k) ~= "string" then
        invalid("headers: names must be strings, got " .. describe(k))
      end
      if type(v) ~= "string" and type(v) ~= "number" then
        invalid("headers: the value of " .. describe(k)
          .. " must be a string or number, got " .. describe(v))
      end
    end
  end
  if opts.data ~= nil and type(opts.data) ~= "string" then
    invalid("data must be a string, got " .. describe(opts.data))
  end
  if opts.data ~= nil and opts.json ~= nil then
    invalid("data and json cannot both be given")
  end
  local auth = opts.auth
  if auth ~= nil and (type(auth) ~= "table" or type(auth[1]) ~= "string"
      or type(auth[2]) ~= "string") then
    invalid("auth must be {user, password} (two strings), got "
      .. describe(auth))
  end
  if auth ~= nil and opts.headers ~= nil
      and M.has_header(opts.headers, "authorization") then
    invalid("auth and an Authorization header cannot both be given")
  end
  check_seconds(opts.timeout, "timeout", true)
  check_seconds(opts.connect_timeout, "connect_timeout", true)
  check_integer(opts.max_redirects, "max_redirects", 0, true)
  check_integer(opts.max_body_size, "max_body_size", 0, true)
  if opts.ca_file ~= nil then values.check_readable(opts.ca_file, "ca_file") end
  values.check_type(opts.verify_tls, "boolean", "verify_tls")
end

-- `headers` with name = value added, copying it first unless `copied`.
local function add_header(headers, copied, name, value)
  if not copied then
    local t = {}
    if headers then for k, v in pairs(headers) do t[k] = v end end
    headers = t
  end
  headers[name] = value
  return headers
end

--- The core's request table from method, url and checked options. The
-- headers table is copied only when something must be added to it.
function M.make_spec(method, url, opts)
  local headers, copied = opts.headers, false
  if opts.params ~= nil then
    local query = M.encode_query(opts.params)
    if query ~= "" then
      -- The query goes before a #fragment, which is never sent.
      local base, fragment = url:match("^([^#]*)(#.*)$")
      base = base or url
      url = base .. (base:find("?", 1, true) and "&" or "?") .. query
        .. (fragment or "")
    end
  end
  local body, content_type
  if opts.json ~= nil then
    local ok, encoded = pcall(json().encode, opts.json)
    if not ok then invalid("json cannot be encoded: " .. tostring(encoded)) end
    body, content_type = encoded, "application/json"
  elseif opts.data ~= nil then
    body, content_type = opts.data, "application/octet-stream"
  end
  if content_type and not (headers and M.has_header(headers, "content-type")) then
    headers, copied = add_header(headers, copied, "Content-Type", content_type),
      true
  end
  if opts.auth ~= nil then
    if url:find("^%a[%w+.-]*://[^/?#]*@") then
      invalid("auth cannot be given with credentials in the url")
    end
    headers = add_header(headers, copied, "Authorization",
      "Basic " .. base64(opts.auth[1] .. ":" .. opts.auth[2]))
  end
  return {
    method = method, url = url, headers = headers, body = body,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout,
    max_redirects = opts.max_redirects, max_body_size = opts.max_body_size,
    ca_file = opts.ca_file, verify_tls = opts.verify_tls,
  }
end

local NO_OPTIONS = {}

-- The method and url of the last call without options, and its request
-- table: a probe or a load repeats one such call thousands of times a
-- second, and the table is only read (by the core and by error messages),
-- so the calls that repeat it share it.
local plain_method, plain_url, plain_spec

--- Check and build the core's request table for `retry.request`.
function M.build(method, url, opts)
  if opts == nil then
    if plain_spec and method == plain_method and url == plain_url then
      return plain_spec
    end
    values.check_string(method, "method")
    values.check_string(url, "url")
    local spec = M.make_spec(method:upper(), url, NO_OPTIONS)
    core.keep(spec)
    plain_method, plain_url, plain_spec = method, url, spec
    return spec
  end
  values.check_string(method, "method")
  values.check_string(url, "url")
  M.check_options(opts, M.OPTIONS, "request options")
  return M.make_spec(method:upper(), url, opts)
end

--- Send one attempt; returns the Response, or nil and an error object.
-- Either has `resent = true` when libcurl sent the request a second time
-- because a kept-alive connection died before any byte of the reply.
--- The outcome of a finished transfer operation started for `spec`: a
-- Response, or nil and an error object.
function M.result(op, spec)
  local resp, kind, message, curl_code, resent, finished_at = core.result(op)
  if resp then return resp end
  return nil, M.error_of(spec, kind, message, curl_code, resent, finished_at)
end

--- The error object of an attempt of `spec` that failed as core.result
-- tells (kind, message, curl code, resent, finished_at).
function M.error_of(spec, kind, message, curl_code, resent, finished_at)
  return errors.new(kind, message, {
    method = spec.method, url = spec.url, curl_code = curl_code,
    resent = resent or nil, finished_at = finished_at,
  })
end

--- One attempt: start it and wait for it. Returns a Response, or nil and an
-- error object.
function M.send(spec)
  local op, kind, message = core.start(spec)
  if not op then
    return nil, errors.new(kind, message, { method = spec.method,
      url = spec.url })
  end
  core.wait(nil, op)
  return M.result(op, spec)
end

-- Response methods written in Lua, beside text/read/close from C.
local methods = core.response_methods

local function check_response(self, method)
  if not core.is_response(self) then
    values.not_self(self, method, "response", "Response", "r", "()")
  end
end

--- Decode the body as JSON; raises an `invalid` error when it is not JSON.
function methods:json()
  check_response(self, "json")
  local ok, value = pcall(json().decode, self:text())
  if not ok then
    invalid("response body is not valid JSON: " .. tostring(value))
  end
  return value
end

--- Raise a `status` error when status >= 400.
function methods:raise_for_status()
  check_response(self, "raise_for_status")
  if self.status >= 400 then
    error(errors.new("status", self.status .. " " .. (self.reason or ""), {
      status = self.status, response = self, method = self.method,
      url = self.url, attempt = self.attempts,
    }), 2)
  end
  return self
end

return M
