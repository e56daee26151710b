--- RetryClient and RequestParams (contract section 2) and the retry loop
-- (section 3's decision order). Everything here is policy; one attempt is
-- http.send, one wait is retry.sleep.
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local strategies = require("retry.strategies")
local task = require("retry.task")
local values = require("retry.values")

local M = {}

local invalid = errors.invalid

-- Read-only stand-in for absent option tables: no table per request.
local NO_OPTIONS = setmetatable({}, { __newindex = function()
  error("retry.client: NO_OPTIONS is read-only", 2)
end })

--- Defaults of a client, as aiohttp's ClientTimeout(total=300) and a connect
-- limit so a black-holed host does not hold an attempt for the whole total.
M.DEFAULT_TIMEOUT = 300
M.DEFAULT_CONNECT_TIMEOUT = 30

local function type_name(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__name or type(v)
end

local function check_keys(t, allowed, what, level)
  for k in pairs(t) do
    if not allowed[k] then
      invalid(what .. ": unknown option '" .. tostring(k) .. "'", level + 1)
    end
  end
end

local function check_type(v, expected, name, level)
  if v ~= nil and type(v) ~= expected then
    invalid(name .. " must be a " .. expected .. ", got " .. type_name(v),
      level + 1)
  end
end

local function check_seconds(v, name, level)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0) then
    invalid(name .. " must be a number of seconds > 0, got " .. tostring(v),
      level + 1)
  end
end

local function check_strategy(v, name, level)
  if v ~= nil and not strategies.is_options(v) then
    invalid(name .. " must be retry options (e.g. retry.ExponentialRetry{}), got "
      .. type_name(v), level + 1)
  end
end

-- The length of a non-empty sequence, else nil.
local function sequence_length(t)
  local n = values.list_length(t)
  return n ~= 0 and n or nil
end

--- `RequestParams{method=, url=, headers=, trace_request_ctx=, kwargs=}`:
-- one entry of a `client:requests` list. `kwargs` may hold params, data,
-- json, auth and timeout.
local RequestParams = { __name = "retry.RequestParams" }
RequestParams.__index = RequestParams

local PARAMS_KEYS = { method = true, url = true, headers = true,
  trace_request_ctx = true, kwargs = true }
local KWARGS_KEYS = { params = true, data = true, json = true, auth = true,
  timeout = true }

local function request_params(t, level)
  if type(t) ~= "table" then
    invalid("RequestParams needs a table, got " .. type_name(t), level + 1)
  end
  check_keys(t, PARAMS_KEYS, "RequestParams", level + 1)
  if type(t.method) ~= "string" or t.method == "" then
    invalid("RequestParams: method must be a non-empty string", level + 1)
  end
  if type(t.url) ~= "string" or t.url == "" then
    invalid("RequestParams: url must be a non-empty string, got "
      .. type_name(t.url), level + 1)
  end
  check_type(t.headers, "table", "RequestParams: headers", level + 1)
  check_type(t.trace_request_ctx, "table",
    "RequestParams: trace_request_ctx", level + 1)
  check_type(t.kwargs, "table", "RequestParams: kwargs", level + 1)
  if t.kwargs then check_keys(t.kwargs, KWARGS_KEYS, "RequestParams kwargs", level + 1) end
  return setmetatable({
    method = t.method:upper(), url = t.url, headers = t.headers,
    trace_request_ctx = t.trace_request_ctx, kwargs = t.kwargs,
  }, RequestParams)
end

function M.RequestParams(t) return request_params(t, 2) end

-- Build the per-attempt list for a url (a string or a list of strings).
local function params_for_url(method, url, o, level)
  local urls
  if type(url) == "string" then
    if url == "" then invalid("url must not be empty", level + 1) end
    urls = { url }
  elseif type(url) == "table" and getmetatable(url) == nil then
    local n = sequence_length(url)
    if not n then
      invalid("url must be a string or a non-empty list of strings", level + 1)
    end
    for i = 1, n do
      if type(url[i]) ~= "string" or url[i] == "" then
        invalid("url[" .. i .. "] must be a non-empty string, got "
          .. type_name(url[i]), level + 1)
      end
    end
    urls = url
  else
    invalid("url must be a string or a non-empty list of strings, got "
      .. type_name(url), level + 1)
  end
  local kwargs = { params = o.params, data = o.data, json = o.json,
    auth = o.auth, timeout = o.timeout }
  local list = {}
  for i, u in ipairs(urls) do
    list[i] = setmetatable({ method = method, url = u, headers = o.headers,
      trace_request_ctx = o.trace_request_ctx, kwargs = kwargs }, RequestParams)
  end
  return list
end

local RetryClient = { __name = "retry.RetryClient" }
RetryClient.__index = RetryClient

local CLIENT_KEYS = { retry_options = true, raise_for_status = true,
  logger = true, base_url = true, headers = true, timeout = true,
  connect_timeout = true, trace_configs = true }
local CALL_KEYS = { retry_options = true, raise_for_status = true,
  headers = true, params = true, data = true, json = true, auth = true,
  timeout = true, trace_request_ctx = true }
local REQUESTS_KEYS = { retry_options = true, raise_for_status = true }
local HOOKS = { on_request_start = true, on_request_end = true,
  on_request_exception = true }

--- `retry.RetryClient{...}` (all fields optional): retry_options,
-- raise_for_status, logger, base_url, headers, timeout, connect_timeout,
-- trace_configs.
function M.RetryClient(o)
  if o == nil then o = {} end
  if type(o) ~= "table" then
    invalid("RetryClient needs a table of options, got " .. type_name(o), 2)
  end
  check_keys(o, CLIENT_KEYS, "RetryClient", 2)
  check_strategy(o.retry_options, "RetryClient: retry_options", 2)
  check_type(o.raise_for_status, "boolean", "RetryClient: raise_for_status", 2)
  check_type(o.base_url, "string", "RetryClient: base_url", 2)
  check_type(o.headers, "table", "RetryClient: headers", 2)
  check_seconds(o.timeout, "RetryClient: timeout", 2)
  check_seconds(o.connect_timeout, "RetryClient: connect_timeout", 2)
  if o.logger ~= nil and (type(o.logger) ~= "table"
      or type(o.logger.debug) ~= "function") then
    invalid("RetryClient: logger must be an object with :debug, :warning "
      .. "and :exception methods", 2)
  end
  check_type(o.trace_configs, "table", "RetryClient: trace_configs", 2)
  for i, tc in ipairs(o.trace_configs or {}) do
    if type(tc) ~= "table" then
      invalid("RetryClient: trace_configs[" .. i .. "] must be a table", 2)
    end
    for k, v in pairs(tc) do
      if not HOOKS[k] or type(v) ~= "function" then
        invalid("RetryClient: trace_configs[" .. i .. "]." .. tostring(k)
          .. " is not a hook (on_request_start, on_request_end, "
          .. "on_request_exception) function", 2)
      end
    end
  end
  return setmetatable({
    retry_options = o.retry_options or strategies.ExponentialRetry(),
    raise_for_status = o.raise_for_status or false,
    logger = o.logger,
    base_url = o.base_url,
    headers = o.headers or {},
    timeout = o.timeout or M.DEFAULT_TIMEOUT,
    connect_timeout = o.connect_timeout or M.DEFAULT_CONNECT_TIMEOUT,
    trace_configs = o.trace_configs or {},
    closed = false,
    active = {}, -- tasks with a request of this client in progress
  }, RetryClient)
end

local function join_url(base, url)
  if url:find("^%a[%w+.-]*://") or base == nil then return url end
  return (base:gsub("/+$", "")) .. (url:sub(1, 1) == "/" and url or "/" .. url)
end

-- Per-call headers override the client's, names compared case-insensitively.
-- Without per-call headers the client's table is used as is (http.build
-- copies it).
local function merge_headers(base, extra)
  if extra == nil then return base end
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(extra) do
    local lower = type(k) == "string" and k:lower()
    for existing in pairs(out) do
      if type(existing) == "string" and existing:lower() == lower then
        out[existing] = nil
      end
    end
    out[k] = v
  end
  return out
end

local function call_hooks(client, hook, ctx, params)
  for _, tc in ipairs(client.trace_configs) do
    local f = tc[hook]
    if f then f(client, ctx, params) end
  end
end

-- The message is formatted only when there is a logger to read it.
local function log(client, level, format, ...)
  local logger = client.logger
  if logger and logger[level] then logger[level](logger, format:format(...)) end
end

local function wait_before_retry(options, n, response)
  local wait = options:get_timeout(n, response)
  if type(wait) ~= "number" or wait ~= wait or wait < 0 then
    error("get_timeout(" .. n .. ") returned " .. tostring(wait)
      .. ": a number of seconds >= 0 is needed", 0)
  end
  return wait
end

-- The retry decision for a response (contract section 3), in its order.
-- Returns true to retry.
local function should_retry(options, n, method, response)
  if n >= options.attempts then return false end
  if not strategies.retries_method(options, method) then return false end
  if strategies.retries_status(options, response.status) then return true end
  local callback = options.evaluate_response_callback
  if callback == nil then return false end
  return not callback(response)
end

local function status_error(response, n)
  return errors.new("status", response.status .. " " .. response.reason, {
    status = response.status, response = response, method = response.method,
    url = response.url, attempt = n,
  })
end

-- One attempt: build, trace, send. Returns response or nil, err, plus the
-- attempt's record.
local function attempt(client, p, n)
  local kw = p.kwargs or NO_OPTIONS
  local url = join_url(client.base_url, p.url)
  local headers = merge_headers(client.headers, p.headers)
  local spec = http.build(p.method, url, {
    headers = headers, params = kw.params, data = kw.data, json = kw.json,
    auth = kw.auth, timeout = kw.timeout or client.timeout,
    connect_timeout = client.connect_timeout,
  })
  -- Hook arguments are built only for a client that has hooks: a load
  -- check pays nothing for tracing it does not use.
  local traced = #client.trace_configs > 0
  local ctx, params
  if traced then
    local trace_ctx = {}
    for k, v in pairs(p.trace_request_ctx or {}) do trace_ctx[k] = v end
    trace_ctx.current_attempt = n
    ctx = { trace_request_ctx = trace_ctx }
    params = { method = spec.method, url = spec.url, headers = spec.headers }
    call_hooks(client, "on_request_start", ctx, params)
  end
  local t0 = core.now()
  local response, err = http.send(spec)
  local record = { attempt = n, elapsed = core.now() - t0 }
  if response then
    record.status = response.status
    if traced then
      params.response = response
      call_hooks(client, "on_request_end", ctx, params)
    end
  else
    err.attempt = n
    record.error = err
    if traced then
      params.exception = err
      call_hooks(client, "on_request_exception", ctx, params)
    end
  end
  return response, err, record
end

local function finish(response, n, history, started)
  response.attempts = n
  response.history = history
  response.elapsed = core.now() - started
  return response
end

-- The retry loop over a list of RequestParams (entry n for attempt n, the
-- last one after the list runs out). Fields of `options` are read at every
-- step, so changes to a shared strategy take effect on the next request.
local function execute(client, list, options, raise_for_status)
  local history = {}
  local started = core.now()
  local n = 0
  while true do
    n = n + 1
    local p = list[n] or list[#list]
    log(client, "debug", "Attempt %d out of %d", n, options.attempts)
    local response, err, record = attempt(client, p, n)
    history[n] = record
    if response then
      local ok, retry_it = pcall(should_retry, options, n, p.method, response)
      if not ok then
        response:close()
        error(retry_it, 0)
      end
      if not retry_it and raise_for_status and response.status >= 400 then
        -- raise_for_status happens inside the attempt, as in aiohttp, so
        -- `exceptions = {"status"}` retries it.
        err = status_error(response, n)
        err.history = history
        if n >= options.attempts
            or not strategies.retries_error_kind(options, "status") then
          finish(response, n, history, started)
          error(err, 0)
        end
        retry_it = true
      end
      if not retry_it then return finish(response, n, history, started) end
      record.wait = wait_before_retry(options, n, response)
      log(client, "debug", "Retrying after response code %d, waiting %.3f s",
        response.status, record.wait)
      response:close()
    else
      err.history = history
      if n >= options.attempts
          or not strategies.retries_error_kind(options, err.kind) then
        error(err, 0)
      end
      record.wait = wait_before_retry(options, n, nil)
      log(client, "debug", "Retrying after %s error (%s), waiting %.3f s",
        err.kind, err.message, record.wait)
    end
    core.sleep(record.wait)
  end
end

local function run_request(client, list, options, raise_for_status)
  if client.closed then
    invalid("the RetryClient is closed", 3)
  end
  local me = task.current()
  if me then client.active[me] = (client.active[me] or 0) + 1 end
  local ok, result = pcall(execute, client, list, options, raise_for_status)
  if me then
    local left = client.active[me] - 1
    client.active[me] = left > 0 and left or nil
  end
  if not ok then error(result, 0) end
  return result
end

-- Per-call opts: a strategy object, or a table of options.
local function call_options(client, opts, allowed, level)
  if opts == nil then
    return NO_OPTIONS, client.retry_options, client.raise_for_status
  end
  if strategies.is_options(opts) then
    return NO_OPTIONS, opts, client.raise_for_status
  end
  if type(opts) ~= "table" then
    invalid("request options must be a table or retry options, got "
      .. type_name(opts), level + 1)
  end
  check_keys(opts, allowed, "request options", level + 1)
  check_strategy(opts.retry_options, "retry_options", level + 1)
  check_type(opts.raise_for_status, "boolean", "raise_for_status", level + 1)
  check_type(opts.headers, "table", "headers", level + 1)
  check_type(opts.trace_request_ctx, "table", "trace_request_ctx", level + 1)
  check_seconds(opts.timeout, "timeout", level + 1)
  local raise = opts.raise_for_status
  if raise == nil then raise = client.raise_for_status end
  return opts, opts.retry_options or client.retry_options, raise
end

--- `client:request(method, url, opts)`: the Response once retrying is over.
function RetryClient:request(method, url, opts)
  if getmetatable(self) ~= RetryClient then
    invalid("use client:request(...), not client.request(...)", 2)
  end
  if type(method) ~= "string" or method == "" then
    invalid("method must be a non-empty string, got " .. type_name(method), 2)
  end
  local o, options, raise = call_options(self, opts, CALL_KEYS, 2)
  local list = params_for_url(method:upper(), url, o, 2)
  return run_request(self, list, options, raise)
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head",
  "options" }) do
  local method = m:upper()
  RetryClient[m] = function(self, url, opts)
    if getmetatable(self) ~= RetryClient then
      invalid("use client:" .. m .. "(...), not client." .. m .. "(...)", 2)
    end
    local o, options, raise = call_options(self, opts, CALL_KEYS, 2)
    local list = params_for_url(method, url, o, 2)
    return run_request(self, list, options, raise)
  end
end

--- `client:requests(params_list, opts)`: attempt n uses params_list[n].
function RetryClient:requests(params_list, opts)
  if type(params_list) ~= "table" or not sequence_length(params_list) then
    invalid("params_list must be a non-empty list of RequestParams", 2)
  end
  local list = {}
  for i, p in ipairs(params_list) do
    list[i] = getmetatable(p) == RequestParams and p or request_params(p, 2)
  end
  local _, options, raise = call_options(self, opts, REQUESTS_KEYS, 2)
  return run_request(self, list, options, raise)
end

--- Close the client: requests in progress in other tasks are cancelled and
-- new ones raise. Idempotent; `<close>` calls it.
function RetryClient:close()
  if self.closed then return end
  self.closed = true
  local me = task.current()
  for t in pairs(self.active) do
    if t ~= me then t:cancel() end
  end
end

RetryClient.__close = RetryClient.close

function RetryClient:__tostring()
  return "retry.RetryClient" .. (self.closed and " (closed)" or "")
end

M.RetryClient_class = RetryClient
return M
