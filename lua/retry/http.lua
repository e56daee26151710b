--- One HTTP attempt: turns Lua request options into what the C core sends,
-- and the core's outcome into a Response or an error object.
local core = require("retry.core")
local errors = require("retry.errors")

local M = {}

local cjson -- loaded on first use: scripts that never touch JSON skip it

local function json()
  if not cjson then cjson = require("cjson") end
  return cjson
end

M.METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
  "TRACE", "CONNECT" }

local function percent_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

local function scalar(v, what)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  errors.invalid(what .. " must be a string, number or boolean, got " .. t, 4)
end

--- Encode a params table: `{a = 1, b = {"x", "y"}}` (keys sorted, list
-- values repeated) or a list of pairs `{{"a", 1}, {"a", 2}}`.
function M.encode_query(params)
  if type(params) ~= "table" then
    errors.invalid("params must be a table, got " .. type(params), 3)
  end
  local parts = {}
  local function add(k, v)
    parts[#parts + 1] = percent_encode(scalar(k, "params key")) .. "="
      .. percent_encode(scalar(v, "params value"))
  end
  if #params > 0 then
    for _, pair in ipairs(params) do
      if type(pair) ~= "table" then
        errors.invalid("params as a list must hold {name, value} pairs", 3)
      end
      add(pair[1], pair[2])
    end
    return table.concat(parts, "&")
  end
  local keys = {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local v = params[k]
    if type(v) == "table" then
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

local function has_header(headers, name)
  name = name:lower()
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

local function check_seconds(v, name)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
    errors.invalid(name .. " must be a number of seconds >= 0, got "
      .. tostring(v), 4)
  end
end

--- Build the core's request table from method, url and options:
-- headers, params, data, json, auth, timeout, connect_timeout.
function M.build(method, url, opts)
  if type(method) ~= "string" or method == "" then
    errors.invalid("method must be a non-empty string, got "
      .. tostring(method), 3)
  end
  if type(url) ~= "string" or url == "" then
    errors.invalid("url must be a non-empty string, got " .. tostring(url), 3)
  end
  opts = opts or {}
  local headers = {}
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then
      errors.invalid("headers must be a table, got " .. type(opts.headers), 3)
    end
    for k, v in pairs(opts.headers) do headers[k] = v end
  end
  if opts.params ~= nil then
    local query = M.encode_query(opts.params)
    if query ~= "" then
      url = url .. (url:find("?", 1, true) and "&" or "?") .. query
    end
  end
  local body
  if opts.json ~= nil then
    if opts.data ~= nil then
      errors.invalid("data and json cannot both be given", 3)
    end
    body = json().encode(opts.json)
    if not has_header(headers, "content-type") then
      headers["Content-Type"] = "application/json"
    end
  elseif opts.data ~= nil then
    if type(opts.data) ~= "string" then
      errors.invalid("data must be a string, got " .. type(opts.data), 3)
    end
    body = opts.data
    if not has_header(headers, "content-type") then
      headers["Content-Type"] = "application/octet-stream"
    end
  end
  if opts.auth ~= nil then
    local auth = opts.auth
    if type(auth) ~= "table" or type(auth[1]) ~= "string"
        or type(auth[2]) ~= "string" then
      errors.invalid("auth must be {user, password} (two strings)", 3)
    end
    headers["Authorization"] = "Basic " .. base64(auth[1] .. ":" .. auth[2])
  end
  check_seconds(opts.timeout, "timeout")
  check_seconds(opts.connect_timeout, "connect_timeout")
  return {
    method = method:upper(), url = url, headers = headers, body = body,
    timeout = opts.timeout, connect_timeout = opts.connect_timeout,
  }
end

--- Send one attempt; returns the Response, or nil and an error object.
function M.send(spec)
  local resp, kind, message, curl_code = core.request(spec)
  if resp then return resp end
  return nil, errors.new(kind, message, {
    method = spec.method, url = spec.url, curl_code = curl_code,
  })
end

-- Response methods written in Lua, beside text/read/close from C.
local methods = core.response_methods

--- Decode the body as JSON; raises when it is not valid JSON.
function methods:json()
  local ok, value = pcall(json().decode, self:text())
  if not ok then
    error("response body is not valid JSON: " .. tostring(value), 2)
  end
  return value
end

--- Raise a `status` error when status >= 400.
function methods:raise_for_status()
  if self.status >= 400 then
    error(errors.new("status", self.status .. " " .. (self.reason or ""), {
      status = self.status, response = self, method = self.method,
      url = self.url, attempt = self.attempts,
    }), 2)
  end
  return self
end

return M
