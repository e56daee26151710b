--- One attempt of a RetryClient request: the request table it sends, a
-- connection slot, the trace hooks, and the transfer itself: one, or with
-- hedging several copies racing, cut at the request's deadline. Policy
-- (whether to retry, how long to wait) is lua/retry/loop.lua's.
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local slots = require("retry.slots")
local strategies = require("retry.strategies")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local retry_reason = strategies.retry_reason

-- Read-only stand-in for absent option tables: no table per request.
local NO_OPTIONS = setmetatable({}, { __newindex = function()
  invalid("retry: NO_OPTIONS is read-only")
end })
M.NO_OPTIONS = NO_OPTIONS

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
-- ops are the client's while they run, so close() can cancel them (a wait
-- that raises leaves them in the client's weak set).
local function wait_ops(client, limit, ops)
  local active = client.ops
  for i = 1, #ops do active[ops[i]] = true end
  local i = core.wait(limit, table.unpack(ops))
  for j = 1, #ops do active[ops[j]] = nil end
  return i
end

-- A started copy of the attempt, or nil and the error that kept it home.
local function start(spec)
  local op, kind, message = core.start(spec)
  if op then return op end
  return nil, errors.new(kind, message, { method = spec.method,
    url = spec.url })
end

-- An attempt's first transfer, started and counted (and noted in `started`
-- for a load check), or nil and the error that kept it home. A retry
-- counts here, once its transfer has started (`st.retrying`, the reason
-- the retry loop gave it; st is nil for a first attempt): not when the
-- breaker refused it, the request was cancelled or its client closed
-- during the wait, or the deadline passed first.
local function start_first(client, spec, started, st)
  local op, err = start(spec)
  if not op then return nil, err end
  if started then started[1] = op end
  local counters = client.counters
  counters.attempts = counters.attempts + 1
  local reason = st and st.retrying
  if reason then
    st.retrying = nil
    counters.retries = counters.retries + 1
    local by = counters.retries_by_reason
    by[reason] = (by[reason] or 0) + 1
  end
  return op
end

-- Whether any of the copies sent its request, and whether libcurl sent
-- any of them a second time (a dead kept-alive connection).
local function sent_state(ops)
  local went, resent = false, false
  for i = 1, #ops do
    local w, r = core.went_out(ops[i])
    went, resent = went or w, resent or r
  end
  return went, resent
end

local function cancel_all(ops)
  for i = 1, #ops do core.cancel_op(ops[i]) end
end

-- How many of the copies beyond the first (all[2], ...) went out, added to
-- the client's `hedges`: a copy cancelled before libcurl sent it (the
-- first answer came meanwhile) was never a request the server could see.
local function count_hedges(counters, all)
  local sent = 0
  if all then
    for i = 2, #all do
      if core.went_out(all[i]) then sent = sent + 1 end
    end
    counters.hedges = counters.hedges + sent
  end
  return sent
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
deadline cuts it. Returns response or nil, err, how many copies beyond
the first went out, and when the deadline cut it whether any copy had gone
out. ]]
local function send(client, spec, started, st)
  local method = spec.method
  local first, err = start_first(client, spec, started, st)
  if not first then return nil, err, 0 end
  local counters = client.counters
  local ops = { first }
  local all -- every copy started, finished ones too, once there are two
  local hedge = st.hedge
  if hedge and not IDEMPOTENT[method] then hedge = nil end
  local extra = 0 -- copies started beyond the first
  local last_response, last_err
  while true do
    local limit
    if hedge and 1 + extra < hedge.max then limit = hedge.delay end
    if st.deadline then
      local left = math.max(0, st.deadline - core.now())
      if limit == nil or left < limit then limit = left end
    end
    local waited, i = pcall(wait_ops, client, limit, ops)
    if not waited then
      -- The task was cancelled: its copies end with it, and those that
      -- went out were requests all the same.
      count_hedges(counters, all)
      error(i, 0)
    end
    if i == nil then
      if st.deadline and core.now() >= st.deadline then
        cancel_all(ops)
        st.deadline_passed = true
        if last_response then last_response:close() end
        local cut = deadline_error(st, spec)
        local went, resent = sent_state(all or ops)
        cut.resent = resent or nil
        return nil, cut, count_hedges(counters, all), went
      end
      local copy, copy_err = start(spec)
      if copy then
        ops[#ops + 1] = copy
        all = all or { first }
        all[#all + 1] = copy
        if started then started[#started + 1] = copy end
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
        count_hedges(counters, all)
        error(closed_error(spec), 0)
      end
      local acceptable = #ops == 0
      if not acceptable then
        local ok, reason = pcall(retry_reason, st.options, method, response,
          e, st.raise, true)
        if not ok then
          -- The copies still out must not outlive the request.
          cancel_all(ops)
          if response then response:close() end
          if last_response then last_response:close() end
          count_hedges(counters, all)
          error(reason, 0)
        end
        acceptable = reason == nil
        -- The retry loop takes this verdict as it is: asked again, a
        -- callback could answer otherwise, or do twice what it does.
        st.judged = acceptable
      end
      if acceptable then
        cancel_all(ops)
        if last_response and last_response ~= response then
          last_response:close()
        end
        return response, e, count_hedges(counters, all)
      end
      -- Not good enough while other copies may still do better.
      if last_response then last_response:close() end
      last_response, last_err = response, e
    end
  end
end

-- send for an attempt with neither hedging nor a deadline: one transfer.
-- Kept apart so that the common attempt runs no more code, and holds no
-- more of its task's stack while it waits, than it needs (wait_ops for
-- one operation, inline).
local function send_one(client, spec, started, st)
  local op, err = start_first(client, spec, started, st)
  if not op then return nil, err, 0 end
  client.ops[op] = true
  core.wait(nil, op)
  client.ops[op] = nil
  local response, e = http.result(op, spec)
  if response == nil and e.kind == "cancelled" and client.closed then
    error(closed_error(spec), 0)
  end
  return response, e, 0
end

-- An attempt's record to the load checks' recorders, and its end to the
-- trace hooks (`trace` is { ctx, params }): apart from attempt, whose
-- frame lies under every wait of its transfer and should stay small (a
-- metamethod runs at the top of its caller's frame).
local function report(client, record, response)
  for recorder in pairs(client.recorders) do recorder(record, response) end
end

local function trace_end(client, trace, response, err)
  local ctx, params = trace[1], trace[2]
  if response then
    params.response = response
    call_hooks(client, "on_request_end", ctx, params)
  else
    params.exception = err
    call_hooks(client, "on_request_exception", ctx, params)
  end
end

-- Attempt n's record in the request's history, made whole at once: a
-- table grown field by field is rehashed.
local function record_of(n, elapsed, response, err)
  if response then
    return { attempt = n, elapsed = elapsed, status = response.status,
      resent = response.resent }
  end
  err.attempt = n
  return { attempt = n, elapsed = elapsed, error = err, resent = err.resent }
end

-- End attempt n of `spec` with an error that does not return an outcome
-- (a cancel, the client closed, an error of evaluate_response_callback
-- while hedged copies were out): an error of lretry's names the request
-- and the attempt (a task's cancel, or the slots, know neither), and the
-- hooks hear of any through on_request_exception, as of a failed
-- attempt, so that every on_request_start has its end (as aiohttp's do
-- for a cancelled request). An error a hook raises here would hide the
-- one that ends the request, so it is dropped.
local function fail(client, trace, spec, n, e)
  if errors.is_error(e) then
    if e.url == nil then e.method, e.url = spec.method, spec.url end
    if e.attempt == nil then e.attempt = n end
  end
  if trace then pcall(trace_end, client, trace, nil, e) end
  error(e, 0)
end

-- take_slots for attempt n: a cancel during the wait for a slot ends the
-- attempt as fail says.
local function take_slots_or_fail(client, spec, trace, n)
  local ok, host, queued = pcall(take_slots, client, spec)
  if not ok then fail(client, trace, spec, n, host) end
  return host, queued
end

-- Attempt n, which the deadline cut before it started: its outcome (a
-- `timeout` error) and record, as send's for an attempt cut before it went
-- out; no load check counts it.
local function cut_before_sending(client, st, spec, n, trace)
  st.deadline_passed = true
  local err = deadline_error(st, spec)
  local record = record_of(n, 0, nil, err)
  if trace then trace_end(client, trace, nil, err) end
  return nil, err, record
end

-- One attempt: trace, wait for a slot, send. Returns response or nil, err,
-- plus the attempt's record. Waiting for a slot counts toward neither the
-- attempt's timeout nor its elapsed.
local function attempt(client, st, p, spec, n)
  -- Hook arguments are built only for a client that has hooks: a load
  -- check pays nothing for tracing it does not use. One local for them:
  -- the attempt's frame is under every wait of its transfer.
  local trace -- { ctx, params } when traced
  if #client.trace_configs > 0 then
    local trace_ctx = {}
    for k, v in pairs(p.trace_request_ctx or {}) do trace_ctx[k] = v end
    trace_ctx.current_attempt = n
    trace = { { trace_request_ctx = trace_ctx },
      { method = spec.method, url = spec.url, headers = spec.headers } }
    call_hooks(client, "on_request_start", trace[1], trace[2])
  end
  local limited = client.slots ~= nil or client.limit_per_host > 0
  local host, queued
  if limited then host, queued = take_slots_or_fail(client, spec, trace, n) end
  if client.closed then -- by a hook, or while this waited for a slot
    if limited then give_slots(client, host) end
    fail(client, trace, spec, n, closed_error(spec))
  end
  if st.deadline and core.now() >= st.deadline then
    -- The deadline passed while this waited for a slot or in a hook: a
    -- transfer started now would go out (on a kept-alive connection
    -- libcurl writes the request at once) after the caller was told the
    -- request timed out.
    if limited then give_slots(client, host) end
    return cut_before_sending(client, st, spec, n, trace)
  end
  local t0 = core.now()
  -- The copies a load check may need to look at if the attempt is cut.
  local started = next(client.recorders) and {} or nil
  local ok, response, err, extra, went = pcall(
    (st.deadline or st.hedge and IDEMPOTENT[spec.method]) and send
      or send_one, client, spec, started, st)
  local elapsed = core.now() - t0
  if limited then give_slots(client, host) end
  if not ok then
    -- Cancelled (or closed) in flight: a load check counts it when its
    -- request went out, as the server may have seen it.
    local resent
    if started then went, resent = sent_state(started) end
    if went then
      report(client, { attempt = n, elapsed = elapsed, error = response,
        resent = resent or nil })
    end
    fail(client, trace, spec, n, response)
  end
  local record = record_of(n, elapsed, response, err)
  if limited and queued > 0 then record.queued = queued end
  if extra > 0 then record.hedges = extra end
  -- Load checks (retry.load) count every attempt of their requests, but
  -- one the deadline cut before it went out, as one cut any other way.
  if went ~= false and next(client.recorders) then
    report(client, record, response)
  end
  if trace then trace_end(client, trace, response, err) end
  return response, err, record
end

--[[ Attempt n of a plain prepared request (loop.prepare): one transfer,
counted, in client.ops while it runs, with none of attempt's hooks, slots
or hedges (the request has none). Returns the Response, or nil and the
error. A cancel in flight, or the client closed meanwhile, is reported to
the load checks' recorders when the request went out, and raised, as
attempt does. `t0` is when the attempt began. ]]
local function send_plain(client, spec, t0, n, st)
  local op, err = start_first(client, spec, nil, st)
  if not op then return nil, err end
  local active = client.ops
  active[op] = true
  local ok, e = pcall(core.wait, nil, op)
  active[op] = nil
  if ok then
    local response
    response, err = http.result(op, spec)
    if response or err.kind ~= "cancelled" or not client.closed then
      return response, err
    end
    e = closed_error(spec)
  end
  local went, resent = core.went_out(op)
  if went then
    report(client, { attempt = n, elapsed = core.now() - t0, error = e,
      resent = resent or nil })
  end
  error(e, 0)
end

-- attempt, for a plain prepared request's attempts after its first (in
-- run_loop): the outcome and its record, reported.
local function attempt_plain(client, st, _, spec, n)
  local t0 = core.now()
  local response, err = send_plain(client, spec, t0, n, st)
  local record = record_of(n, core.now() - t0, response, err)
  if next(client.recorders) then report(client, record, response) end
  return response, err, record
end

M.join_url, M.merge_headers, M.spec_for = join_url, merge_headers, spec_for
M.record_of, M.report = record_of, report
M.send_plain, M.attempt_plain = send_plain, attempt_plain
M.call_hooks, M.log, M.closed_error = call_hooks, log, closed_error
M.wait_ops, M.attempt = wait_ops, attempt
return M
