--- RetryClient and RequestParams (contract section 2) and the retry loop
-- (section 3's decision order). Everything here is policy; one attempt is
-- http.send, one wait is retry.sleep.
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local slots = require("retry.slots")
local strategies = require("retry.strategies")
local task = require("retry.task")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local check_type = values.check_type

-- Read-only stand-in for absent option tables: no table per request.
local NO_OPTIONS = setmetatable({}, { __newindex = function()
  invalid("retry.client: NO_OPTIONS is read-only")
end })

--- Defaults of a client, as aiohttp's ClientTimeout(total=300) and
-- TCPConnector(limit=100), and a connect limit so a black-holed host does
-- not hold an attempt for the whole total.
M.DEFAULT_TIMEOUT = 300
M.DEFAULT_CONNECT_TIMEOUT = 30
M.DEFAULT_LIMIT = 100

local function check_strategy(v, name)
  if v ~= nil and not strategies.is_options(v) then
    invalid(name .. " must be retry options (e.g. retry.ExponentialRetry{}), "
      .. "got " .. describe(v))
  end
end

-- The length of a non-empty sequence, else nil.
local function sequence_length(t)
  local n = values.list_length(t)
  return n ~= 0 and n or nil
end

--- `RequestParams{method=, url=, headers=, trace_request_ctx=, kwargs=}`:
-- one entry of a `client:requests` list. `kwargs` may hold params, data,
-- json, auth, timeout, max_redirects and max_body_size.
local RequestParams = { __name = "retry.RequestParams" }
RequestParams.__index = RequestParams

local PARAMS_KEYS = { method = true, url = true, headers = true,
  trace_request_ctx = true, kwargs = true }
local KWARGS_KEYS = { params = true, data = true, json = true, auth = true,
  timeout = true, max_redirects = true, max_body_size = true }
local HEADERS_ONLY = { headers = true }

local function request_params(t)
  if type(t) ~= "table" then
    invalid("RequestParams needs a table, got " .. describe(t))
  end
  values.check_keys(t, PARAMS_KEYS, "RequestParams")
  values.check_string(t.method, "RequestParams: method")
  values.check_string(t.url, "RequestParams: url")
  if t.headers ~= nil then
    http.check_options({ headers = t.headers }, HEADERS_ONLY, "RequestParams")
  end
  check_type(t.trace_request_ctx, "table", "RequestParams: trace_request_ctx")
  if t.kwargs ~= nil then
    http.check_options(t.kwargs, KWARGS_KEYS, "RequestParams: kwargs")
  end
  return setmetatable({
    method = t.method:upper(), url = t.url, headers = t.headers,
    trace_request_ctx = t.trace_request_ctx, kwargs = t.kwargs,
  }, RequestParams)
end

function M.RequestParams(t) return request_params(t) end

-- Build the per-attempt list for a url (a string or a list of strings).
local function params_for_url(method, url, o)
  local urls
  if type(url) == "string" then
    if url == "" then invalid("url must not be empty") end
    urls = { url }
  elseif type(url) == "table" and getmetatable(url) == nil then
    local n = sequence_length(url)
    if not n then
      invalid("url must be a string or a non-empty list of strings")
    end
    for i = 1, n do
      if type(url[i]) ~= "string" or url[i] == "" then
        invalid("url[" .. i .. "] must be a non-empty string, got "
          .. describe(url[i]))
      end
    end
    urls = url
  else
    invalid("url must be a string or a non-empty list of strings, got "
      .. describe(url))
  end
  local kwargs = { params = o.params, data = o.data, json = o.json,
    auth = o.auth, timeout = o.timeout, max_redirects = o.max_redirects,
    max_body_size = o.max_body_size }
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
  connect_timeout = true, trace_configs = true, limit = true,
  limit_per_host = true, max_redirects = true, max_body_size = true,
  ca_file = true, verify_tls = true }
local CALL_KEYS = { retry_options = true, raise_for_status = true,
  headers = true, params = true, data = true, json = true, auth = true,
  timeout = true, trace_request_ctx = true, max_redirects = true,
  max_body_size = true }
local REQUESTS_KEYS = { retry_options = true, raise_for_status = true }
local HOOKS = { on_request_start = true, on_request_end = true,
  on_request_exception = true }
-- The client options whose shape http.check_options knows.
local WIRE_KEYS = { headers = true, timeout = true, connect_timeout = true,
  max_redirects = true, max_body_size = true, ca_file = true,
  verify_tls = true }

local function check_trace_configs(list)
  check_type(list, "table", "RetryClient: trace_configs")
  if list == nil then return end
  if not values.list_length(list) then
    invalid("RetryClient: trace_configs must be a list of tables")
  end
  for i, tc in ipairs(list) do
    if type(tc) ~= "table" then
      invalid("RetryClient: trace_configs[" .. i .. "] must be a table, got "
        .. describe(tc))
    end
    for k, v in pairs(tc) do
      if not HOOKS[k] or not values.is_callable(v) then
        invalid("RetryClient: trace_configs[" .. i .. "]." .. tostring(k)
          .. " is not a hook (on_request_start, on_request_end, "
          .. "on_request_exception) function")
      end
    end
  end
end

--- `retry.RetryClient{...}` (all fields optional): retry_options,
-- raise_for_status, logger, base_url, headers, timeout, connect_timeout,
-- trace_configs, limit, limit_per_host, max_redirects, max_body_size,
-- ca_file, verify_tls.
function M.RetryClient(o)
  if o == nil then o = {} end
  if type(o) ~= "table" then
    invalid("RetryClient needs a table of options, got " .. describe(o))
  end
  values.check_keys(o, CLIENT_KEYS, "RetryClient")
  local wire = {}
  for k in pairs(WIRE_KEYS) do wire[k] = o[k] end
  http.check_options(wire, WIRE_KEYS, "RetryClient")
  check_strategy(o.retry_options, "RetryClient: retry_options")
  check_type(o.raise_for_status, "boolean", "RetryClient: raise_for_status")
  check_type(o.base_url, "string", "RetryClient: base_url")
  if o.base_url ~= nil then
    local bad = core.check({ method = "GET", url = o.base_url })
    if bad then invalid("RetryClient: base_url: " .. bad) end
  end
  if o.headers ~= nil then
    local bad = core.check({ method = "GET", url = "http://x/",
      headers = o.headers })
    if bad then invalid("RetryClient: " .. bad) end
  end
  values.check_integer(o.limit, "RetryClient: limit", 0)
  values.check_integer(o.limit_per_host, "RetryClient: limit_per_host", 0)
  local logger = o.logger
  if logger ~= nil and (type(logger) ~= "table"
      or not values.is_callable(logger.debug)
      or (logger.warning ~= nil and not values.is_callable(logger.warning))
      or (logger.exception ~= nil
        and not values.is_callable(logger.exception))) then
    invalid("RetryClient: logger must be an object with :debug, :warning "
      .. "and :exception methods")
  end
  check_trace_configs(o.trace_configs)
  local limit = math.tointeger(o.limit or M.DEFAULT_LIMIT)
  local per_host = math.tointeger(o.limit_per_host or 0)
  return setmetatable({
    retry_options = o.retry_options or strategies.ExponentialRetry(),
    raise_for_status = o.raise_for_status or false,
    logger = o.logger,
    base_url = o.base_url,
    headers = o.headers or {},
    timeout = o.timeout or M.DEFAULT_TIMEOUT,
    connect_timeout = o.connect_timeout or M.DEFAULT_CONNECT_TIMEOUT,
    trace_configs = o.trace_configs or {},
    limit = limit,
    limit_per_host = per_host,
    max_redirects = o.max_redirects,
    max_body_size = o.max_body_size,
    ca_file = o.ca_file,
    verify_tls = o.verify_tls,
    ca_checked = o.ca_file, -- the ca_file last found readable
    closed = false,
    active = {}, -- tasks with a request of this client in progress
    slots = limit > 0 and slots.new(limit) or nil,
    host_slots = {}, -- origin -> Slots, while any are held or awaited
  }, RetryClient)
end

-- The client's fields are read by every request, so a script may change
-- them (the demo empties trace_configs); one set to a bad value is named
-- here, before anything is sent. The wire options (timeouts, limits of
-- redirects and body, TLS) are checked by the core as it reads them.
local function bad_setting(client, field, must)
  invalid("RetryClient: " .. field .. " must be " .. must .. ", got "
    .. describe(client[field]))
end

local function check_settings(client)
  if type(client.headers) ~= "table" then
    bad_setting(client, "headers", "a table")
  end
  if type(client.trace_configs) ~= "table" then
    bad_setting(client, "trace_configs", "a list of tables")
  end
  if client.base_url ~= nil and type(client.base_url) ~= "string" then
    bad_setting(client, "base_url", "a string")
  end
  if client.logger ~= nil and type(client.logger) ~= "table" then
    bad_setting(client, "logger",
      "an object with :debug, :warning and :exception methods")
  end
  if type(client.raise_for_status) ~= "boolean" then
    bad_setting(client, "raise_for_status", "a boolean")
  end
  local limit, per_host = client.limit, client.limit_per_host
  if math.type(limit) ~= "integer" or limit < 0 then
    bad_setting(client, "limit", "an integer >= 0")
  end
  if math.type(per_host) ~= "integer" or per_host < 0 then
    bad_setting(client, "limit_per_host", "an integer >= 0")
  end
  if client.ca_file ~= client.ca_checked then
    if client.ca_file ~= nil then
      values.check_readable(client.ca_file, "RetryClient: ca_file")
    end
    client.ca_checked = client.ca_file
  end
  local total = client.slots
  if limit == 0 then
    if total then total.limit = math.huge end
  elseif total then
    total.limit = limit
  else
    client.slots = slots.new(limit)
  end
end

local function join_url(base, url)
  if base == nil or url:find("^%a[%w+.-]*://") then return url end
  return (base:gsub("/+$", "")) .. (url:sub(1, 1) == "/" and url or "/" .. url)
end

-- Per-call headers override the client's, names compared case-insensitively.
-- Without per-call headers the client's table is used as is.
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

-- The core's request table for one entry of the attempt list.
local function spec_for(client, p)
  local kw = p.kwargs or NO_OPTIONS
  local headers = merge_headers(client.headers, p.headers)
  if kw.auth ~= nil and http.has_header(headers, "authorization") then
    invalid("auth and an Authorization header cannot both be given")
  end
  local max_redirects = kw.max_redirects
  if max_redirects == nil then max_redirects = client.max_redirects end
  local max_body_size = kw.max_body_size
  if max_body_size == nil then max_body_size = client.max_body_size end
  return http.make_spec(p.method, join_url(client.base_url, p.url), {
    headers = headers, params = kw.params, data = kw.data, json = kw.json,
    auth = kw.auth, timeout = kw.timeout or client.timeout,
    connect_timeout = client.connect_timeout, max_redirects = max_redirects,
    max_body_size = max_body_size, ca_file = client.ca_file,
    verify_tls = client.verify_tls,
  })
end

local function call_hooks(client, hook, ctx, params)
  for i, tc in ipairs(client.trace_configs) do
    if type(tc) ~= "table" then
      invalid("RetryClient: trace_configs[" .. i .. "] must be a table, got "
        .. describe(tc))
    end
    local f = tc[hook]
    if f then
      if not values.is_callable(f) then
        invalid("RetryClient: trace_configs[" .. i .. "]." .. hook
          .. " must be a function, got " .. describe(f))
      end
      f(client, ctx, params)
    end
  end
end

-- The message is formatted only when there is a logger to read it.
local function log(client, level, format, ...)
  local logger = client.logger
  local f = type(logger) == "table" and logger[level]
  if f then
    if not values.is_callable(f) then
      invalid("RetryClient: logger." .. level .. " must be a function, got "
        .. describe(f))
    end
    f(logger, format:format(...))
  end
end

-- The attempts limit, read live: a change made during a request counts.
local function attempts_of(options)
  local attempts = options.attempts
  if math.type(attempts) ~= "integer" or attempts < 1 then
    invalid("retry_options: field 'attempts' must be an integer >= 1, got "
      .. describe(attempts))
  end
  return attempts
end

local function wait_before_retry(options, n, response)
  local wait = options:get_timeout(n, response)
  if type(wait) ~= "number" or wait ~= wait or wait < 0 or wait == math.huge then
    invalid("retry_options: get_timeout(" .. n .. ") returned "
      .. describe(wait) .. ": a finite number of seconds >= 0 is needed")
  end
  return wait
end

-- The retry decision for a response (contract section 3), in its order.
-- Returns true to retry.
local function should_retry(options, n, method, response)
  if n >= attempts_of(options) then return false end
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

local DEFAULT_PORTS = { http = "80", https = "443" }

-- The origin of an http(s) URL, for limit_per_host: scheme://host:port,
-- lower case, without credentials, with the default port written out.
local function origin(url)
  local scheme, authority = url:match("^(%a[%w+.-]*)://([^/?#]*)")
  if not scheme then return url end
  scheme = scheme:lower()
  local hostport = authority:gsub("^.*@", ""):lower()
  if not hostport:find(":%d+$") then
    hostport = hostport .. ":" .. (DEFAULT_PORTS[scheme] or "")
  end
  return scheme .. "://" .. hostport
end

-- Wait for a connection slot (per host, then for the client). Returns the
-- host's Slots or nil, and the seconds spent waiting.
local function take_slots(client, spec)
  local host, queued = nil, 0
  if client.limit_per_host > 0 then
    local key = origin(spec.url)
    host = client.host_slots[key]
    if host == nil then
      host = slots.new(client.limit_per_host)
      host.key = key
      client.host_slots[key] = host
    end
    queued = host:acquire()
  end
  local total = client.slots
  if total and not total:try_take() then
    local ok, waited = pcall(total.acquire, total)
    if not ok then
      if host then host:release() end
      error(waited, 0)
    end
    queued = queued + waited
  end
  return host, queued
end

local function give_slots(client, host)
  if client.slots then client.slots:release() end
  if host then
    host:release()
    if host:idle() then client.host_slots[host.key] = nil end
  end
end

-- One attempt: trace, wait for a slot, send. Returns response or nil, err,
-- plus the attempt's record. Waiting for a slot counts toward neither the
-- attempt's timeout nor its elapsed.
local function attempt(client, p, spec, n)
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
  local limited = client.slots ~= nil or client.limit_per_host > 0
  local host, queued
  if limited then host, queued = take_slots(client, spec) end
  local t0 = core.now()
  local ok, response, err = pcall(http.send, spec)
  local elapsed = core.now() - t0
  if limited then give_slots(client, host) end
  if not ok then error(response, 0) end
  local record = { attempt = n, elapsed = elapsed }
  if limited and queued > 0 then record.queued = queued end
  if response then
    record.status = response.status
    record.resent = response.resent
    if traced then
      params.response = response
      call_hooks(client, "on_request_end", ctx, params)
    end
  else
    err.attempt = n
    record.error = err
    record.resent = err.resent
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

-- The request table of every entry of the list, checked before the first
-- attempt goes out (the first entry is checked by its own attempt).
local function specs_for(client, list)
  local specs = {}
  for i = 1, #list do
    specs[i] = spec_for(client, list[i])
    if i > 1 then
      local bad = core.check(specs[i])
      if bad then invalid("attempt " .. i .. ": " .. bad) end
    end
  end
  return specs
end

-- The retry loop over a list of RequestParams (entry n for attempt n, the
-- last one after the list runs out). Fields of `options` are read at every
-- step, so changes to a shared strategy take effect on the next request.
local function execute(client, list, options, raise_for_status)
  -- client.retry_options is live, so it may have been set to anything.
  if not strategies.is_options(options) then
    invalid("retry_options must be retry options (e.g. "
      .. "retry.ExponentialRetry{}), got " .. describe(options))
  end
  strategies.check_live(options, "retry_options")
  local specs = specs_for(client, list)
  local history = {}
  local started = core.now()
  local n = 0
  local fresh = false -- the next attempt goes out on a new connection
  while true do
    n = n + 1
    if n > 1 and client.closed then
      invalid("the RetryClient was closed during the request")
    end
    local p = list[n] or list[#list]
    if client.logger then
      log(client, "debug", "Attempt %d out of %d", n, attempts_of(options))
    end
    local spec = specs[n] or specs[#specs]
    if fresh then
      -- libcurl 7.88 takes a reset idle connection for alive, so after a
      -- connection fault another pooled one may be as dead: a retry that
      -- reaches the server needs a connection of its own.
      local copy = { fresh_connect = true }
      for k, v in pairs(spec) do copy[k] = v end
      spec = copy
    end
    local response, err, record = attempt(client, p, spec, n)
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
        if n >= attempts_of(options)
            or not strategies.retries_error_kind(options, "status") then
          finish(response, n, history, started)
          error(err, 0)
        end
        retry_it = true
      end
      if not retry_it then return finish(response, n, history, started) end
      record.wait = wait_before_retry(options, n, response)
      fresh = false
      log(client, "debug", "Retrying after response code %d, waiting %.3f s",
        response.status, record.wait)
      response:close()
    else
      err.history = history
      -- Bad arguments stay bad: an `invalid` error is never retried.
      if err.kind == "invalid" or n >= attempts_of(options)
          or not strategies.retries_error_kind(options, err.kind) then
        error(err, 0)
      end
      record.wait = wait_before_retry(options, n, nil)
      fresh = err.kind == "network"
      log(client, "debug", "Retrying after %s error (%s), waiting %.3f s",
        err.kind, err.message, record.wait)
    end
    core.sleep(record.wait)
  end
end

local function run_request(client, list, options, raise_for_status)
  if client.closed then
    invalid("the RetryClient is closed")
  end
  check_settings(client)
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
local function call_options(client, opts, allowed)
  if opts == nil then
    return NO_OPTIONS, client.retry_options, client.raise_for_status
  end
  if strategies.is_options(opts) then
    return NO_OPTIONS, opts, client.raise_for_status
  end
  if type(opts) ~= "table" then
    invalid("request options must be a table or retry options, got "
      .. describe(opts))
  end
  http.check_options(opts, allowed, "request options")
  check_strategy(opts.retry_options, "retry_options")
  check_type(opts.raise_for_status, "boolean", "raise_for_status")
  check_type(opts.trace_request_ctx, "table", "trace_request_ctx")
  local raise = opts.raise_for_status
  if raise == nil then raise = client.raise_for_status end
  return opts, opts.retry_options or client.retry_options, raise
end

local function check_client(self, method)
  if getmetatable(self) ~= RetryClient then
    invalid("client:" .. method .. ": expected a RetryClient as self, got "
      .. describe(self) .. " (call it as client:" .. method .. "(...))")
  end
end

--- `client:request(method, url, opts)`: the Response once retrying is over.
function RetryClient:request(method, url, opts)
  check_client(self, "request")
  values.check_string(method, "method")
  local o, options, raise = call_options(self, opts, CALL_KEYS)
  local list = params_for_url(method:upper(), url, o)
  return run_request(self, list, options, raise)
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head",
  "options" }) do
  local method = m:upper()
  RetryClient[m] = function(self, url, opts)
    check_client(self, m)
    local o, options, raise = call_options(self, opts, CALL_KEYS)
    local list = params_for_url(method, url, o)
    return run_request(self, list, options, raise)
  end
end

--- `client:requests(params_list, opts)`: attempt n uses params_list[n].
function RetryClient:requests(params_list, opts)
  check_client(self, "requests")
  if type(params_list) ~= "table" or not sequence_length(params_list) then
    invalid("params_list must be a non-empty list of RequestParams, got "
      .. describe(params_list))
  end
  local list = {}
  for i, p in ipairs(params_list) do
    list[i] = getmetatable(p) == RequestParams and p or request_params(p)
  end
  local _, options, raise = call_options(self, opts, REQUESTS_KEYS)
  return run_request(self, list, options, raise)
end

--- Close the client: requests in progress in other tasks are cancelled and
-- new ones raise. Idempotent; `<close>` calls it.
function RetryClient:close()
  check_client(self, "close")
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
