--- RetryClient and RequestParams (contract sections 2 and 8): options and
-- their checks, the request methods, stats and close. The retry loop is
-- lua/retry/loop.lua; one attempt is lua/retry/attempt.lua.
local attempt_mod = require("retry.attempt")
local breaker_mod = require("retry.breaker")
local budget_mod = require("retry.budget")
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local loop = require("retry.loop")
local slots = require("retry.slots")
local strategies = require("retry.strategies")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local check_type = values.check_type

local NO_OPTIONS = attempt_mod.NO_OPTIONS

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
      local where = "RetryClient: trace_configs[" .. i .. "]." .. tostring(k)
      if not HOOKS[k] then
        invalid(where .. " is not a hook: the hooks are on_request_start, "
          .. "on_request_end, on_request_exception and on_breaker_change")
      end
      if not values.is_callable(v) then
        invalid(where .. " must be a function, got " .. describe(v))
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
    base_checked = o.base_url, -- the base_url last found to be a URL
    deadline = check_deadline(o.deadline, "RetryClient: deadline"),
    hedge = check_hedge(o.hedge, "RetryClient: hedge"),
    budget = o.budget,
    breaker = o.breaker,
    counters = { requests = 0, attempts = 0, retries = 0,
      retries_by_reason = {}, budget_refusals = 0, hedges = 0 },
    closed = false,
    -- The transfers and backoff timers of its requests while they run,
    -- for close() to cancel. Weak: an operation whose wait raised (its
    -- task cancelled) is not taken out, and goes with its task.
    ops = setmetatable({}, { __mode = "k" }),
    recorders = {}, -- functions retry.load calls with each attempt's record
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
  local base_url = client.base_url
  if base_url ~= client.base_checked then
    -- Changed since: named as such, not as the url joined to it.
    if base_url ~= nil then
      if type(base_url) ~= "string" then
        bad_setting(client, "base_url", "a string")
      end
      local bad = core.check({ method = "GET", url = base_url })
      if bad then invalid("RetryClient: base_url: " .. bad) end
    end
    client.base_checked = base_url
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

-- A request may go ahead: the client is open and its fields are fit.
local function check_ready(client)
  if client.closed then
    invalid("the RetryClient is closed")
  end
  check_settings(client)
end

local function run_request(client, list, options, call, specs)
  check_ready(client)
  return loop.execute(client, list, options, call, specs)
end

--[[ The attempt list and request tables of a call without options, kept
for the client's last plain method and URL: a load makes one such call
thousands of times a second. Requests share them, as nothing writes to
either; they are made again when a client field they were made from
changed (the headers table is the request table's own, so an edit in place
is sent as it is). ]]
local function plain_call(client, method, url)
  local c = client.plain
  if c and c.url == url and c.method == method
      and c.headers == client.headers and c.base_url == client.base_url
      and c.timeout == client.timeout
      and c.connect_timeout == client.connect_timeout
      and c.max_redirects == client.max_redirects
      and c.max_body_size == client.max_body_size
      and c.ca_file == client.ca_file and c.verify_tls == client.verify_tls
  then
    return c.list, c.specs
  end
  local list = params_for_url(method, url, NO_OPTIONS)
  local spec = attempt_mod.spec_for(client, list[1])
  -- The core reads it once, then only its headers (client.headers itself).
  core.keep(spec)
  client.plain = { method = method, url = url, list = list,
    specs = { spec },
    headers = client.headers, base_url = client.base_url,
    timeout = client.timeout, connect_timeout = client.connect_timeout,
    max_redirects = client.max_redirects,
    max_body_size = client.max_body_size, ca_file = client.ca_file,
    verify_tls = client.verify_tls }
  return list, client.plain.specs
end

-- Per-call opts: a strategy object, or a table of options. Returns the
-- options for the attempt list, the strategy and the call's settings.
-- The settings of a call without options: shared, as nothing writes them.
local PLAIN_SETTINGS = { [true] = { raise = true },
  [false] = { raise = false } }

local function call_options(client, opts, allowed)
  if opts == nil or strategies.is_options(opts) then
    return NO_OPTIONS, opts or client.retry_options,
      PLAIN_SETTINGS[client.raise_for_status]
        or { raise = client.raise_for_status }
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
    values.not_self(self, method, "client", "RetryClient", "client", "(...)")
  end
end

-- The checks and request tables of a call for one method (upper case) and
-- url, for core.request (which runs this on a thread of its own,
-- src/lua_run.h): loop.plan's values. The plain case reuses the client's
-- cached request tables (plain_call).
local function plan_call(client, method, url, opts)
  local o, options, call = call_options(client, opts, CALL_KEYS)
  local list, specs
  if o == NO_OPTIONS and type(url) == "string" and url ~= "" then
    -- Checked before plain_call builds the request from the fields.
    check_ready(client)
    list, specs = plain_call(client, method, url)
  else
    list = params_for_url(method, url, o)
    check_ready(client)
  end
  return loop.plan(client, list, options, call, specs)
end

do
  local helpers = { plan = plan_call }
  for k, v in pairs(loop.request_helpers) do helpers[k] = v end
  core.run_helpers(helpers)
end

-- A request of the client's: core.request makes its attempts in C, or
-- returns false and what Lua's loop needs to make them. Under core.request
-- are only the script's frames and the method's, so that a request
-- waiting in backoff keeps its task's stack at Lua's first size.
local execute_checked = loop.execute_checked

local function sent(first, ...)
  if first == false then return execute_checked(...) end
  return first, ...
end

local request = core.request

--- `client:request(method, url, opts)`: the Response once retrying is over.
function RetryClient:request(method, url, opts)
  check_client(self, "request")
  values.check_string(method, "method")
  return sent(request(self, method:upper(), url, opts))
end

-- The methods test self in place, with no call of check_client on the way:
-- Lua keeps a call record for the deepest call a task has made, and ten
-- thousand tasks in backoff keep one more each for a call one level down.
for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head",
  "options" }) do
  local method = m:upper()
  RetryClient[m] = function(self, url, opts)
    if getmetatable(self) ~= RetryClient then check_client(self, m) end
    return sent(request(self, method, url, opts))
  end
end

--[[ `prepare(client, method, url, opts)`: a function that sends this
request, with retries, each time it is called, for a caller that owns the
client and its strategy and never lets a script reach them (`lretry load`,
`retry.load` with a url and no client): their fields are checked here, once,
rather than before every request as a script's client needs (some 400 Lua
VM instructions a request). Each call checks only that the client is still
open. Not for a client a script holds: changes it made later would go
unchecked, and for a plain request (loop.prepare) unheeded, as the
strategy's answer for each status is kept. ]]
function M.prepare(client, method, url, opts)
  if getmetatable(client) ~= RetryClient then
    invalid("client.prepare: expected a RetryClient, got " .. describe(client))
  end
  values.check_string(method, "method")
  method = method:upper()
  local o, options, call = call_options(client, opts, CALL_KEYS)
  check_ready(client)
  loop.check_options(options)
  local list = params_for_url(method, url, o)
  local specs = loop.specs_for(client, list)
  -- The first entry too (specs_for leaves it to its attempt): a prepared
  -- request is checked once, not at each call.
  local bad = core.check(specs[1])
  if bad then invalid("client.prepare: " .. bad) end
  -- The core reads them once, then only their headers.
  for i = 1, #specs do core.keep(specs[i]) end
  return loop.prepare(client, list, options, call, specs)
end

--- Whether `fn` is a function prepare made.
M.is_prepared = loop.is_prepared

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
