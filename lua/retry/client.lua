--- RetryClient and RequestParams (contract section 2) and the retry loop
-- (section 3's decision order). Everything here is policy; one attempt is
-- http.send, one wait is retry.sleep.
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local breaker_mod = require("retry.breaker")
local budget_mod = require("retry.budget")
local slots = require("retry.slots")
local strategies = require("retry.strategies")
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
  ca_file = true, verify_tls = true, deadline = true, hedge = true,
  budget = true, breaker = true }
local CALL_KEYS = { retry_options = true, raise_for_status = true,
  headers = true, params = true, data = true, json = true, auth = true,
  timeout = true, trace_request_ctx = true, max_redirects = true,
  max_body_size = true, deadline = true, hedge = true, before_retry = true }
local REQUESTS_KEYS = { retry_options = true, raise_for_status = true }
local HOOKS = { on_request_start = true, on_request_end = true,
  on_request_exception = true, on_breaker_change = true }
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
          .. "on_request_exception, on_breaker_change) function")
      end
    end
  end
end

local function check_hedge(v, what)
  if v == nil then return nil end
  if type(v) ~= "table" then
    invalid(what .. " must be a table {delay = seconds, max = copies}, got "
      .. describe(v))
  end
  values.check_keys(v, { delay = true, max = true }, what)
  local delay = values.check_seconds(v.delay, what .. ".delay")
  if delay == nil then invalid(what .. ".delay is required (seconds)") end
  local max = values.check_integer(v.max, what .. ".max", 1) or 2
  return { delay = delay, max = max }
end

local function check_deadline(v, what)
  if v ~= nil and (type(v) ~= "number" or not (v > 0)) then
    invalid(what .. " must be a number of seconds > 0, got " .. describe(v))
  end
  return v
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
  if o.budget ~= nil and not budget_mod.is_budget(o.budget) then
    invalid("RetryClient: budget must be a retry.RetryBudget{...}, got "
      .. describe(o.budget))
  end
  if o.breaker ~= nil and not breaker_mod.is_breaker(o.breaker) then
    invalid("RetryClient: breaker must be a retry.CircuitBreaker{...}, got "
      .. describe(o.breaker))
  end
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
    deadline = check_deadline(o.deadline, "RetryClient: deadline"),
    hedge = check_hedge(o.hedge, "RetryClient: hedge"),
    budget = o.budget,
    breaker = o.breaker,
    counters = { requests = 0, attempts = 0, retries = 0,
      retries_by_reason = {}, budget_refusals = 0, hedges = 0 },
    closed = false,
    ops = {}, -- transfers and backoff timers of its requests, while they run
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
  local deadline = client.deadline
  if deadline ~= nil and (type(deadline) ~= "number" or not (deadline > 0)) then
    bad_setting(client, "deadline", "a number of seconds > 0")
  end
  local hedge = client.hedge
  if hedge ~= nil and (type(hedge) ~= "table"
      or type(hedge.delay) ~= "number" or not (hedge.delay >= 0)
      or hedge.delay == math.huge or math.type(hedge.max) ~= "integer"
      or hedge.max < 1) then
    bad_setting(client, "hedge", "{delay = seconds, max = copies}")
  end
  if client.budget ~= nil and not budget_mod.is_budget(client.budget) then
    bad_setting(client, "budget", "a retry.RetryBudget{...}")
  end
  if client.breaker ~= nil and not breaker_mod.is_breaker(client.breaker) then
    bad_setting(client, "breaker", "a retry.CircuitBreaker{...}")
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
-- The attempts limit, read live: a change made during a request counts.
local function attempts_of(options)
  local attempts = options.attempts
  if math.type(attempts) ~= "integer" or attempts < 1 then
    invalid("retry_options: field 'attempts' must be an integer >= 1, got "
      .. describe(attempts))
  end
  return attempts
end

local function check_wait(wait, what)
  if type(wait) ~= "number" or wait ~= wait or wait < 0 or wait == math.huge then
    invalid(what .. " " .. describe(wait)
      .. ": a finite number of seconds >= 0 is needed")
  end
  return wait
end

local function status_error(response, n)
  return errors.new("status", response.status .. " " .. response.reason, {
    status = response.status, response = response, method = response.method,
    url = response.url, attempt = n,
  })
end

--[[ Decide: why an outcome would be retried (contract section 3's order),
as a function of the options, the method and the outcome alone. Returns the
reason ("status", "callback", or the error kind), or nil when the outcome
stands. `ask_callback` false skips evaluate_response_callback (no attempts
are left and nobody needs the verdict). ]]
local function retry_reason(options, method, response, err, raise,
                            ask_callback)
  if response == nil then
    -- Bad arguments stay bad: an `invalid` error is never retried.
    if err.kind ~= "invalid" and strategies.retries_error_kind(options, err.kind)
    then
      return err.kind
    end
    return nil
  end
  if strategies.retries_method(options, method) then
    if strategies.retries_status(options, response.status) then
      return "status"
    end
    local callback = options.evaluate_response_callback
    if ask_callback and callback ~= nil and not callback(response) then
      return "callback"
    end
  end
  -- raise_for_status happens inside the attempt, as in aiohttp, so
  -- `exceptions = {"status"}` retries it.
  if raise and response.status >= 400
      and strategies.retries_error_kind(options, "status") then
    return "status"
  end
  return nil
end

local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true,
  DELETE = true, TRACE = true }

local function closed_error(spec)
  return errors.new("cancelled", "the RetryClient was closed during the "
    .. "request", { method = spec.method, url = spec.url })
end

local function deadline_error(st, spec)
  return errors.new("timeout", ("the deadline (%g s) passed"):format(
    st.deadline_seconds), { method = spec.method, url = spec.url })
end

-- Wait for the first of ops, at most `limit` seconds (nil: no limit); the
-- ops are the client's while they run, so close() can cancel them.
local function wait_ops(client, limit, ops)
  local active = client.ops
  for i = 1, #ops do active[ops[i]] = true end
  local ok, i = pcall(core.wait, limit, table.unpack(ops))
  for j = 1, #ops do active[ops[j]] = nil end
  if not ok then error(i, 0) end
  return i
end

-- A started copy of the attempt, or nil and the error that kept it home.
local function start(spec)
  local op, kind, message = core.start(spec)
  if op then return op end
  return nil, errors.new(kind, message, { method = spec.method,
    url = spec.url })
end

local function cancel_all(ops)
  for i = 1, #ops do core.cancel_op(ops[i]) end
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

--[[ Send one attempt: one transfer, or with hedging several copies, the
first acceptable answer winning and the others cancelled in flight. The
deadline cuts it. Returns response or nil, err, and how many copies went
beyond the first. ]]
local function send(client, st, spec, method)
  local first, err = start(spec)
  if not first then return nil, err, 0 end
  local ops = { first }
  local hedge = st.hedge
  if hedge and not IDEMPOTENT[method] then hedge = nil end
  local extra = 0
  local last_response, last_err
  while true do
    local limit
    if hedge and 1 + extra < hedge.max then limit = hedge.delay end
    if st.deadline then
      local left = math.max(0, st.deadline - core.now())
      if limit == nil or left < limit then limit = left end
    end
    local i = wait_ops(client, limit, ops)
    if i == nil then
      if st.deadline and core.now() >= st.deadline then
        cancel_all(ops)
        st.deadline_passed = true
        return nil, deadline_error(st, spec), extra
      end
      local copy, copy_err = start(spec)
      if copy then
        ops[#ops + 1] = copy
        extra = extra + 1
      else
        hedge = nil -- a copy cannot start: the ones out must do
        last_err = last_err or copy_err
      end
    else
      local op = table.remove(ops, i)
      local response, e = http.result(op, spec)
      if response == nil and e.kind == "cancelled" and client.closed then
        cancel_all(ops)
        if last_response then last_response:close() end
        error(closed_error(spec), 0)
      end
      local acceptable = #ops == 0 or retry_reason(st.options, method,
        response, e, st.raise, true) == nil
      if acceptable then
        cancel_all(ops)
        if last_response and last_response ~= response then
          last_response:close()
        end
        return response, e, extra
      end
      -- Not good enough while other copies may still do better.
      if last_response then last_response:close() end
      last_response, last_err = response, e
    end
  end
end

-- One attempt: trace, wait for a slot, send. Returns response or nil, err,
-- plus the attempt's record. Waiting for a slot counts toward neither the
-- attempt's timeout nor its elapsed.
local function attempt(client, st, p, spec, n)
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
  local ok, response, err, extra = pcall(send, client, st, spec, p.method)
  local elapsed = core.now() - t0
  if limited then give_slots(client, host) end
  if not ok then error(response, 0) end
  local record = { attempt = n, elapsed = elapsed }
  if limited and queued > 0 then record.queued = queued end
  if extra > 0 then
    record.hedges = extra
    client.counters.hedges = client.counters.hedges + extra
  end
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

-- Breaker state changes go to the logger and to the trace hooks.
local function breaker_notifier(client)
  return function(breaker, from, to)
    log(client, "warning", "Circuit breaker %s -> %s", from, to)
    call_hooks(client, "on_breaker_change",
      { breaker = breaker, from = from, to = to }, nil)
  end
end

-- The outcome that ends the request: the response (or the status error
-- raise_for_status makes of it) or the error, with the request's history.
local function conclude(st, response, err)
  local history = st.history
  if response then
    response.attempts = st.n
    response.history = history
    response.elapsed = core.now() - st.started
    if st.raise and response.status >= 400 then
      err = status_error(response, st.n)
      err.history = history
      error(err, 0)
    end
    return response
  end
  err.history = history
  error(err, 0)
end

-- The next attempt as before_retry sees it, and may change it.
local function next_of(client, st, n)
  local p = st.list[n + 1] or st.list[#st.list]
  local kw = p.kwargs or NO_OPTIONS
  local headers = {}
  for k, v in pairs(merge_headers(client.headers, p.headers)) do
    headers[k] = v
  end
  return { method = p.method, url = join_url(client.base_url, p.url),
    headers = headers, params = kw.params, data = kw.data }
end

-- Call before_retry; returns false to stop, else the wait to use, and
-- stores a changed next attempt in st.next_spec.
local function run_before_retry(client, st, hook, n, response, err, wait)
  local nxt = next_of(client, st, n)
  local original = { method = nxt.method, url = nxt.url,
    headers = nxt.headers, params = nxt.params, data = nxt.data }
  local ctx = { attempt = n, response = response, error = err, wait = wait,
    next = nxt }
  if hook(ctx) == false then return false end
  wait = check_wait(ctx.wait, "before_retry: ctx.wait is")
  local changed = type(ctx.next) ~= "table"
  if not changed then
    for k, v in pairs(original) do
      if ctx.next[k] ~= v then changed = true end
    end
  end
  if changed then
    if type(ctx.next) ~= "table" then
      invalid("before_retry: ctx.next must be a table, got "
        .. describe(ctx.next))
    end
    local x = ctx.next
    values.check_string(x.method, "before_retry: ctx.next.method")
    values.check_string(x.url, "before_retry: ctx.next.url")
    local p = st.list[n + 1] or st.list[#st.list]
    local kw = p.kwargs or NO_OPTIONS
    local data, json = x.data, nil
    if data == nil and x.data == original.data then json = kw.json end
    st.next_spec = http.make_spec(x.method:upper(), x.url, {
      headers = x.headers, params = x.params, data = data, json = json,
      auth = kw.auth, timeout = kw.timeout or client.timeout,
      connect_timeout = client.connect_timeout,
      max_redirects = st.specs[1].max_redirects,
      max_body_size = st.specs[1].max_body_size, ca_file = client.ca_file,
      verify_tls = client.verify_tls,
    })
    st.next_method = x.method:upper()
    local bad = core.check(st.next_spec)
    if bad then invalid("before_retry: ctx.next: " .. bad) end
  end
  return wait
end

-- Wait before the next attempt on a timer the client can cancel.
local function backoff(client, spec, seconds)
  if seconds <= 0 then return end
  local timer = core.timer(seconds)
  wait_ops(client, nil, { timer })
  if core.result(timer) == nil and client.closed then
    error(closed_error(spec), 0)
  end
end

local RETRY_AFTER_STATUSES = { 429, 503 }

local function in_list(list, v)
  for i = 1, #list do
    if list[i] == v then return true end
  end
  return false
end

local function count_retry(client, reason)
  local c = client.counters
  c.retries = c.retries + 1
  c.retries_by_reason[reason] = (c.retries_by_reason[reason] or 0) + 1
end

--[[ Act on a retryable outcome: every reason not to retry, in order, then
the wait. Returns the seconds to wait, or nil to stop with this outcome. ]]
local function plan_retry(client, st, n, response, err, record)
  local options = st.options
  local wait = check_wait(options:get_timeout(n, response,
    { previous_wait = st.previous_wait, error = err }),
    "retry_options: get_timeout(" .. n .. ") returned")
  st.previous_wait = wait
  local reason = record.reason
  -- Retry-After: wait at least as long as the server asks.
  if response and options.respect_retry_after ~= false then
    local ra = response.retry_after
    if ra > 0 and in_list(options.retry_after_statuses
        or RETRY_AFTER_STATUSES, response.status) then
      local cap = options.max_retry_after or 120
      if ra > cap then
        log(client, "debug", "Retry-After asks %g s, over max_retry_after "
          .. "(%g s): not retrying", ra, cap)
        record.reason = nil
        return nil
      end
      if ra >= wait then
        wait, reason = ra, "retry_after"
      end
    end
  end
  if st.deadline and core.now() + wait > st.deadline then
    log(client, "debug", "Not retrying: waiting %.3f s would pass the "
      .. "deadline", wait)
    return nil
  end
  local budget = client.budget
  if budget and not budget:try_withdraw() then
    client.counters.budget_refusals = client.counters.budget_refusals + 1
    log(client, "debug", "Not retrying: the retry budget is spent")
    return nil
  end
  local hook = st.before_retry or options.before_retry
  if hook ~= nil then
    if not values.is_callable(hook) then
      invalid("before_retry must be a function, got " .. describe(hook))
    end
    wait = run_before_retry(client, st, hook, n, response, err, wait)
    if wait == false then return nil end
    if st.deadline and core.now() + wait > st.deadline then return nil end
  end
  record.reason, record.wait = reason, wait
  count_retry(client, reason)
  return wait
end

-- The retry loop over a list of RequestParams (entry n for attempt n, the
-- last one after the list runs out): attempt, decide, act. Fields of
-- `options` are read at every step, so changes to a shared strategy take
-- effect on the next request.
local function execute(client, list, options, call)
  -- client.retry_options is live, so it may have been set to anything.
  if not strategies.is_options(options) then
    invalid("retry_options must be retry options (e.g. "
      .. "retry.ExponentialRetry{}), got " .. describe(options))
  end
  strategies.check_live(options, "retry_options")
  local deadline = call.deadline or client.deadline
  local st = { list = list, specs = specs_for(client, list), history = {},
    options = options, raise = call.raise, n = 0, started = core.now(),
    hedge = call.hedge or client.hedge, before_retry = call.before_retry,
    deadline_seconds = deadline }
  if deadline then st.deadline = st.started + deadline end
  local counters, budget, breaker = client.counters, client.budget,
    client.breaker
  counters.requests = counters.requests + 1
  if budget then budget:deposit() end
  local notify = breaker and breaker_notifier(client)
  local trial = false
  local previous -- the last response, kept while the next attempt runs
  local fresh = false -- the next attempt goes out on a new connection
  while true do
    local n = st.n + 1
    st.n = n
    local p = list[n] or list[#list]
    local spec = st.next_spec or st.specs[n] or st.specs[#st.specs]
    local method = st.next_method or p.method
    st.next_spec, st.next_method = nil, nil
    if n > 1 and client.closed then
      if previous then previous:close() end
      if trial then breaker:release_trial() end
      error(closed_error(spec), 0)
    end
    -- The breaker may refuse the attempt.
    if breaker then
      local allowed, is_trial = breaker:allow(notify)
      if not allowed then
        if previous then return conclude(st, previous) end
        st.n = n - 1
        return conclude(st, nil, errors.new("circuit_open",
          "the circuit breaker is open", { method = spec.method,
            url = spec.url }))
      end
      trial = trial or is_trial
    end
    if client.logger then
      log(client, "debug", "Attempt %d out of %d", n, attempts_of(options))
    end
    if fresh then
      -- libcurl 7.88 takes a reset idle connection for alive, so after a
      -- connection fault another pooled one may be as dead: a retry that
      -- reaches the server needs a connection of its own.
      local copy = { fresh_connect = true }
      for k, v in pairs(spec) do copy[k] = v end
      spec = copy
    end
    counters.attempts = counters.attempts + 1
    local ok, response, err, record = pcall(attempt, client, st, p, spec, n)
    if not ok then
      if previous then previous:close() end
      if trial then breaker:release_trial() end
      error(response, 0)
    end
    st.history[n] = record
    if st.deadline_passed and previous then
      -- The deadline cut this attempt: the last response is the outcome.
      if trial then breaker:release_trial() end
      return conclude(st, previous)
    end
    if previous then previous:close() end
    previous = nil
    local attempts = attempts_of(options)
    local left = n < attempts and not st.deadline_passed
    local rok, reason = pcall(retry_reason, options, method, response, err,
      st.raise, left or breaker ~= nil)
    if not rok then
      if response then response:close() end
      error(reason, 0)
    end
    record.reason = reason
    local wait
    if reason and left then
      local pok
      pok, wait = pcall(plan_retry, client, st, n, response, err, record)
      if not pok then
        if response then response:close() end
        error(wait, 0)
      end
    end
    if wait == nil then
      record.reason = nil
      if breaker then breaker:record(reason ~= nil, notify, trial) end
      return conclude(st, response, err)
    end
    fresh = err ~= nil and err.kind == "network"
    if response then
      log(client, "debug", "Retrying after response code %d, waiting %.3f s",
        response.status, wait)
    else
      log(client, "debug", "Retrying after %s error (%s), waiting %.3f s",
        err.kind, err.message, wait)
    end
    previous = response
    local bok, berr = pcall(backoff, client, spec, wait)
    if not bok then
      if previous then previous:close() end
      if trial then breaker:release_trial() end
      error(berr, 0)
    end
  end
end

local function run_request(client, list, options, call)
  if client.closed then
    invalid("the RetryClient is closed")
  end
  check_settings(client)
  return execute(client, list, options, call)
end

-- Per-call opts: a strategy object, or a table of options. Returns the
-- options for the attempt list, the strategy and the call's settings.
local function call_options(client, opts, allowed)
  if opts == nil or strategies.is_options(opts) then
    return NO_OPTIONS, opts or client.retry_options,
      { raise = client.raise_for_status }
  end
  if type(opts) ~= "table" then
    invalid("request options must be a table or retry options, got "
      .. describe(opts))
  end
  http.check_options(opts, allowed, "request options")
  check_strategy(opts.retry_options, "retry_options")
  check_type(opts.raise_for_status, "boolean", "raise_for_status")
  check_type(opts.trace_request_ctx, "table", "trace_request_ctx")
  if opts.before_retry ~= nil and not values.is_callable(opts.before_retry) then
    invalid("before_retry must be a function, got "
      .. describe(opts.before_retry))
  end
  local raise = opts.raise_for_status
  if raise == nil then raise = client.raise_for_status end
  return opts, opts.retry_options or client.retry_options, {
    raise = raise, before_retry = opts.before_retry,
    deadline = check_deadline(opts.deadline, "deadline"),
    hedge = check_hedge(opts.hedge, "hedge"),
  }
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
  local o, options, call = call_options(self, opts, CALL_KEYS)
  local list = params_for_url(method:upper(), url, o)
  return run_request(self, list, options, call)
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head",
  "options" }) do
  local method = m:upper()
  RetryClient[m] = function(self, url, opts)
    check_client(self, m)
    local o, options, call = call_options(self, opts, CALL_KEYS)
    local list = params_for_url(method, url, o)
    return run_request(self, list, options, call)
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
  local _, options, call = call_options(self, opts, REQUESTS_KEYS)
  return run_request(self, list, options, call)
end

--- `client:stats()`: counts since the client was made.
function RetryClient:stats()
  check_client(self, "stats")
  local c = self.counters
  local by_reason = {}
  for k, v in pairs(c.retries_by_reason) do by_reason[k] = v end
  return { requests = c.requests, attempts = c.attempts, retries = c.retries,
    retries_by_reason = by_reason, budget_refusals = c.budget_refusals,
    hedges = c.hedges, breaker_opens = self.breaker and self.breaker.opens or 0 }
end

--- Close the client: its transfers and backoff waits in progress are
-- cancelled (those requests raise a `cancelled` error in their tasks,
-- which go on), requests waiting for a connection slot give up, and new
-- requests raise. Idempotent; `<close>` calls it.
function RetryClient:close()
  check_client(self, "close")
  if self.closed then return end
  self.closed = true
  local ops = {}
  for op in pairs(self.ops) do ops[#ops + 1] = op end
  for i = 1, #ops do core.cancel_op(ops[i]) end
  if self.slots then self.slots:close() end
  for _, host in pairs(self.host_slots) do host:close() end
end

RetryClient.__close = RetryClient.close

function RetryClient:__tostring()
  return "retry.RetryClient" .. (self.closed and " (closed)" or "")
end

M.RetryClient_class = RetryClient
return M
