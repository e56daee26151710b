--- The retry loop of a RetryClient request, as aiohttp-retry's
-- _do_request: make an attempt, decide (a function of the options, the
-- method and the outcome), act (return, raise, or wait and go again). The
-- named points of the loop: the breaker may refuse an attempt; after a
-- retryable outcome the strategy's wait, Retry-After, the deadline, the
-- budget and before_retry each may stop the retrying or shape the wait.
local attempt_mod = require("retry.attempt")
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local slots_mod = require("retry.slots")
local strategies = require("retry.strategies")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local NO_OPTIONS = attempt_mod.NO_OPTIONS
local join_url, merge_headers = attempt_mod.join_url, attempt_mod.merge_headers
local spec_for, call_hooks = attempt_mod.spec_for, attempt_mod.call_hooks
local log, closed_error = attempt_mod.log, attempt_mod.closed_error
local record_of = attempt_mod.record_of
local attempt, attempt_plain = attempt_mod.attempt, attempt_mod.attempt_plain
local retry_reason = strategies.retry_reason
local fixed_waits = strategies.fixed_waits
local fixed_attempts = strategies.fixed_attempts

-- The most attempts of a request whose retries a load's driver makes
-- (src/lua_drive.c's MAX_ATTEMPTS).
local MAX_DRIVEN_ATTEMPTS = 64

-- The attempts limit, read live: a change made during a request counts.
-- An integral float (2.0) counts as the integer, as the constructors and
-- check_live take it: refusing it here would come after an attempt went
-- out.
local function attempts_of(options)
  local attempts = options.attempts
  local n = type(attempts) == "number" and math.tointeger(attempts)
  if not n or n < 1 then
    invalid("retry_options: field 'attempts' must be an integer >= 1, got "
      .. describe(attempts))
  end
  return n
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
    core.conclude(response, st.n, history, core.now() - st.started)
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
  local headers, params = {}, nil
  for k, v in pairs(merge_headers(client.headers, p.headers)) do
    headers[k] = v
  end
  if type(kw.params) == "table" then
    params = {}
    for k, v in pairs(kw.params) do params[k] = v end
  else
    params = kw.params
  end
  return { method = p.method, url = join_url(client.base_url, p.url),
    headers = headers, params = params, data = kw.data }
end

-- Call before_retry; returns false to stop, else the wait to use. The next
-- attempt is rebuilt from ctx.next (st.next_spec), so a change made in
-- place (a header added to ctx.next.headers) counts as much as a new table.
local function run_before_retry(client, st, hook, n, response, err, wait)
  local nxt = next_of(client, st, n)
  local original_data = nxt.data
  local ctx = { attempt = n, response = response, error = err, wait = wait,
    next = nxt }
  if hook(ctx) == false then return false end
  wait = check_wait(ctx.wait, "before_retry: ctx.wait is")
  if type(ctx.next) ~= "table" then
    invalid("before_retry: ctx.next must be a table, got "
      .. describe(ctx.next))
  end
  local x = ctx.next
  values.check_string(x.method, "before_retry: ctx.next.method")
  values.check_string(x.url, "before_retry: ctx.next.url")
  local p = st.list[n + 1] or st.list[#st.list]
  local base = st.specs[n + 1] or st.specs[#st.specs]
  local kw = p.kwargs or NO_OPTIONS
  local data, json = x.data, nil
  if data == nil and original_data == nil then json = kw.json end
  st.next_spec = http.make_spec(x.method:upper(), x.url, {
    headers = x.headers, params = x.params, data = data, json = json,
    auth = kw.auth, timeout = kw.timeout or client.timeout,
    connect_timeout = client.connect_timeout,
    max_redirects = base.max_redirects,
    max_body_size = base.max_body_size, ca_file = client.ca_file,
    verify_tls = client.verify_tls,
  })
  -- A field of the wrong type is raised by the check, a bad url returned:
  -- both are named as ctx.next's.
  local checked, bad = pcall(core.check, st.next_spec)
  if not checked then
    if not errors.is_error(bad, "invalid") then error(bad, 0) end
    bad = bad.message:gsub("^request: ", "")
  end
  if bad then invalid("before_retry: ctx.next: " .. bad) end
  return wait
end

-- Wait before the next attempt on a timer the client can cancel: one
-- operation, waited on here rather than through wait_ops, so a request in
-- backoff holds one frame and one table fewer.
local function backoff(client, spec, seconds)
  if seconds <= 0 then return end
  local timer = core.timer(seconds)
  local active = client.ops
  active[timer] = true
  core.wait(nil, timer)
  active[timer] = nil
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

-- The seconds a response's Retry-After asks to wait (0: none, or not
-- for this status). A function of its own: the Response's fields are read
-- through a metamethod, which runs at the top of its caller's frame, and
-- plan_retry's frame is large and deep in the task's stack.
local function retry_after_of(options, response)
  local ra = response.retry_after
  if ra > 0 and in_list(options.retry_after_statuses or RETRY_AFTER_STATUSES,
      response.status) then
    return ra
  end
  return 0
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
    local ra = retry_after_of(options, response)
    if ra > 0 then
      local cap = options.max_retry_after or 120
      -- A Retry-After too large to read is infinite: over any cap, even
      -- math.huge (no wait could honour it).
      if ra > cap or ra == math.huge then
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
  st.retrying = reason -- counted when its attempt starts (attempt.lua)
  return wait
end

-- The retry planned after the last attempt was not made (the breaker
-- refused it): its record says so by having no reason or wait, and no
-- retry is counted.
local function not_retried(st)
  local last = st.history[st.n]
  if last then last.reason, last.wait = nil, nil end
  st.retrying = nil
end

-- A request ends with an error of its own: the response it kept is freed,
-- and the breaker's trial, if it held it, goes to another request.
local function abandon(response, breaker)
  if response then response:close() end
  if breaker then breaker:release_trial() end
end

-- The retry loop of a request set up by execute (below): attempt, decide,
-- act. A request waits on top of this frame, so it holds as few locals as
-- it can: the frame's size decides how far its task's stack grows.
-- The next attempt's number (st.n), kept in st rather than in a local of
-- run_loop: every local there sits under the attempt's wait. Returns its
-- request table, whose method is the attempt's method.
local function next_attempt(st)
  local n = st.n + 1
  st.n = n
  local spec = st.next_spec or st.specs[n] or st.specs[#st.specs]
  st.next_spec = nil
  return spec
end

-- The first attempt's outcome, made by prepare's plain path, as run_loop's
-- first attempt (its record already reported).
local function take_given(_, st)
  local given = st.given
  st.given = nil
  return given[1], given[2], given[3]
end

local function run_loop(client, st)
  local breaker = client.breaker
  if breaker then st.notify = breaker_notifier(client) end
  local trial = false -- this request is the breaker's half-open trial
  local previous -- the last response, kept while the next attempt runs
  local previous_err -- or the last error
  local fresh = false -- the next attempt goes out on a new connection
  while true do
    local spec = next_attempt(st)
    if st.n > 1 and client.closed then
      abandon(previous, trial and breaker)
      error(closed_error(spec), 0)
    end
    -- The breaker may refuse the attempt (a trial request goes on with
    -- its retries). A refused retry returns the last outcome.
    if breaker and not trial then
      local allowed, is_trial = breaker:allow(st.notify)
      if not allowed then
        st.n = st.n - 1
        not_retried(st)
        if previous or previous_err then
          return conclude(st, previous, previous_err)
        end
        return conclude(st, nil, errors.new("circuit_open",
          "the circuit breaker is open", { method = spec.method,
            url = spec.url }))
      end
      trial = is_trial or false
    end
    if client.logger then
      log(client, "debug", "Attempt %d out of %d", st.n,
        attempts_of(st.options))
    end
    if fresh then
      -- libcurl 7.88 takes a reset idle connection for alive, so after a
      -- connection fault another pooled one may be as dead: a retry that
      -- reaches the server needs a connection of its own.
      local copy = { fresh_connect = true }
      for k, v in pairs(spec) do copy[k] = v end
      spec = copy
    end
    local ok, response, err, record = pcall(st.given and take_given
      or st.plain and attempt_plain or attempt, client, st,
      st.list[st.n] or st.list[#st.list], spec, st.n)
    if not ok then
      abandon(previous, trial and breaker)
      error(response, 0)
    end
    local n = st.n
    st.history[n] = record
    if st.deadline_passed and previous then
      -- The deadline cut this attempt: the last response is the outcome.
      abandon(nil, trial and breaker)
      return conclude(st, previous)
    end
    if previous then previous:close() end
    previous, previous_err = nil, nil
    local left = n < attempts_of(st.options) and not st.deadline_passed
    -- `ok` is used again, not declared again: every local here sits under
    -- the calls below (the strategy's get_timeout, before_retry, the wait).
    local reason
    if st.judged then
      st.judged = nil -- send asked while other copies were out: it stands
    else
      ok, reason = pcall(st.plain or retry_reason, st.options, spec.method,
        response, err, st.raise, left or breaker ~= nil)
      if not ok then
        abandon(response, trial and breaker)
        error(reason, 0)
      end
    end
    record.reason = reason
    local wait
    if reason and left then
      ok, wait = pcall(plan_retry, client, st, n, response, err, record)
      if not ok then
        abandon(response, trial and breaker)
        error(wait, 0)
      end
    end
    if wait == nil then
      record.reason = nil
      if breaker then breaker:record(reason ~= nil, st.notify, trial) end
      return conclude(st, response, err)
    end
    fresh = err ~= nil and err.kind == "network"
    -- The message's arguments are read only for a logger (response.status
    -- is a metamethod call).
    if client.logger ~= nil then
      if response then
        log(client, "debug", "Retrying after response code %d, waiting "
          .. "%.3f s", response.status, wait)
      else
        log(client, "debug", "Retrying after %s error (%s), waiting %.3f s",
          err.kind, err.message, wait)
      end
    end
    if breaker or st.deadline then
      -- Kept for a refused retry, or an attempt the deadline cuts, to
      -- return.
      previous, previous_err = response, err
    elseif response then
      response:close()
    end
    -- Not held through the wait: a request in backoff keeps only what its
    -- next attempt needs, so that ten thousand of them fit.
    response, err, record = nil, nil, nil
    if previous or trial then
      local bok, berr = pcall(backoff, client, spec, wait)
      if not bok then
        abandon(previous, trial and breaker)
        error(berr, 0)
      end
    else
      backoff(client, spec, wait)
    end
  end
end

-- A request begins: the client counts it, its budget earns a deposit.
local function count_request(client)
  local counters, budget = client.counters, client.budget
  counters.requests = counters.requests + 1
  if budget then budget:deposit() end
end

-- The state run_loop keeps for a request that began at `started`.
local function new_state(client, list, options, call, specs, started)
  local deadline = call.deadline or client.deadline
  -- A plain request's fields (these, previous_wait and raise) fit the 8
  -- slots this constructor sizes the table to; the rarer ones are added.
  local st = { list = list, specs = specs or specs_for(client, list),
    history = {}, options = options, n = 0, started = started }
  if call.raise then st.raise = true end
  local hedge = call.hedge or client.hedge
  if hedge then st.hedge = hedge end
  if call.before_retry ~= nil then st.before_retry = call.before_retry end
  if deadline then
    st.deadline_seconds = deadline
    st.deadline = started + deadline
  end
  return st
end

--[[ Whether a request of a script's client can run its attempts in C
(core.request, src/lua_run.h), given a strategy whose waits depend on the
attempt's number alone: whether a response is retried depends on its
status alone (no evaluate_response_callback, no raise_for_status),
nothing acts around its attempts (trace hooks, a logger, a per-host
limit, hedging, a breaker, a load's check counting them), and nothing may
end its retrying early (a deadline, a budget, before_retry). The client's
limit is kept: core.request takes its slots. ]]
local function client_runs_in_c(client, options)
  return #client.trace_configs == 0 and client.logger == nil
    and client.limit_per_host == 0 and next(client.recorders) == nil
    and client.hedge == nil and client.breaker == nil
    and client.budget == nil and client.deadline == nil
    and options.before_retry == nil
    and options.evaluate_response_callback == nil
end

local function runs_in_c(client, list, options, call)
  return #list == 1 and call.hedge == nil and call.deadline == nil
    and call.before_retry == nil and not call.raise
    and client_runs_in_c(client, options)
end

-- The error of attempt n, which the client's close stopped (attempt.lua's
-- fail names the attempt of such an error).
local function closed_in_attempt(spec, n)
  local e = closed_error(spec)
  e.attempt = n
  error(e, 0)
end

-- A request core.request handed back (`how`, src/lua_run.h): the retry
-- loop goes on from attempt n, with its outcome when core.request made it.
local function run_after_c(client, list, options, call, specs, op, n,
    elapsed, queued, history, previous_wait, started, how)
  local spec = specs[1]
  if how == "closed" then error(closed_error(spec), 0) end
  if how == "closed_attempt" then closed_in_attempt(spec, n) end
  if how == "slot_closed" then
    error(errors.new("cancelled", slots_mod.CLOSED_WHILE_QUEUED,
      { method = spec.method, url = spec.url, attempt = n }), 0)
  end
  if how == "stands" then
    -- The outcome: run_loop's conclude, without its state.
    local response = http.result(op, spec)
    local record = record_of(n, elapsed, response)
    if queued > 0 then record.queued = queued end
    history[n] = record
    core.conclude(response, n, history, core.now() - started)
    return response
  end
  local st = new_state(client, list, options, call, specs, started)
  st.history, st.n, st.previous_wait = history, n - 1, previous_wait
  if how == "before" then
    if n > 1 then st.retrying = "status" end
    return run_loop(client, st)
  end
  local response, err = http.result(op, spec)
  if response == nil and err.kind == "cancelled" and client.closed then
    closed_in_attempt(spec, n)
  end
  local record = record_of(n, elapsed, response, err)
  if queued > 0 then record.queued = queued end
  st.given = { response, err, record }
  return run_loop(client, st)
end

-- execute (below) once `options` passed its checks.
local function execute_checked(client, list, options, call, specs)
  local st = new_state(client, list, options, call, specs, core.now())
  count_request(client)
  return run_loop(client, st) -- a tail call: this frame is gone meanwhile
end

--[[ Whether a prepared request takes the plain path (prepare, below):
nothing acts around its attempts (trace hooks, a logger, a connection
limit, hedging, a breaker), nothing may end its retrying early (a
deadline, a budget, before_retry), and whether a response is retried
depends on its status alone (no evaluate_response_callback, no
raise_for_status): `lretry load`'s own client, and retry.load's with a url
and no client. ]]
local function is_plain(client, list, options, call)
  return #list == 1 and #client.trace_configs == 0 and client.logger == nil
    and client.slots == nil and client.limit_per_host == 0
    and client.hedge == nil and call.hedge == nil
    and client.breaker == nil and client.budget == nil
    and client.deadline == nil and call.deadline == nil
    and call.before_retry == nil and options.before_retry == nil
    and options.evaluate_response_callback == nil and not call.raise
end

--[[ A request that client.prepare checked once: a function that sends it,
with retries, at each call, checking only that the client is still open.
A plain request (is_plain) runs its first attempt here, on a short stack:
a response its policy lets stand ends the request at once, and anything
else goes on to run_loop as the outcome of its first attempt, where the
attempts after it skip attempt's hooks, slots and hedges too. Its policy
(strategies.retry_reason) is asked once for each status and error kind:
without a callback or raise_for_status the answer depends on that alone,
and no script can change the client or its strategy. Not for a client a
script holds. ]]
local function sender(client, list, options, call, specs)
  if not is_plain(client, list, options, call) then
    return function()
      if client.closed then invalid("the RetryClient is closed") end
      return execute_checked(client, list, options, call, specs)
    end
  end
  local spec = specs[1]
  local method, left = spec.method, attempts_of(options) > 1
  local reasons = {} -- status or error kind -> the policy's reason, or false
  local function reason_of(response, err, key)
    local reason = retry_reason(options, method, response, err, false, true)
      or false
    reasons[key] = reason
    return reason
  end
  -- retry_reason as run_loop calls it (st.plain), from the cache.
  local function cached_reason(_, _, response, err)
    local key = response and response.status or err.kind
    local reason = reasons[key]
    if reason == nil then reason = reason_of(response, err, key) end
    return reason or nil
  end
  local send_plain, record_of = attempt_mod.send_plain, attempt_mod.record_of
  local report = attempt_mod.report
  -- Whether a first response ends its request: its status is not retried,
  -- or no attempt is left. A policy that raises is raised by run_loop,
  -- which asks again.
  local function stands(response, status)
    local reason = reasons[status]
    if reason == nil then
      local ok, asked = pcall(reason_of, response, nil, status)
      reason = not ok or asked
    end
    return not reason or not left
  end
  -- Whether a first response of each status 100 to 599 stands, for a
  -- load's driver: with no callback the policy reads the status alone.
  local function verdicts()
    local t = {}
    for status = 100, 599 do
      local ok, reason = pcall(retry_reason, options, method,
        { status = status }, nil, false, true)
      if ok then t[status] = not reason or not left end
    end
    return t
  end
  -- The request begun at t0, once its attempt n (1 when nil) has ended
  -- after `elapsed`; for n > 1, `history` holds the records of the
  -- attempts before it (a load's driver made them) and previous_wait the
  -- wait before it.
  local function go_on(response, err, t0, elapsed, n, history, previous_wait)
    local status, stood = nil, false
    n = n or 1
    if response then
      status = response.status -- a metamethod call: read once
      stood = n == 1 and stands(response, status)
    end
    -- record_of's record, made here for a response: its status is read
    -- already, and a call more costs 0.6k instructions a request.
    local record = status and { attempt = n, elapsed = elapsed,
      status = status, resent = response.resent }
      or record_of(n, elapsed, nil, err)
    if next(client.recorders) then report(client, record, response) end
    if stood then
      core.conclude(response, 1, { record }, elapsed)
      return response
    end
    local st = new_state(client, list, options, call, specs, t0)
    if history then
      st.history, st.n, st.previous_wait = history, n - 1, previous_wait
    end
    st.given, st.plain = { response, err, record }, cached_reason
    return run_loop(client, st)
  end
  local function send()
    if client.closed then invalid("the RetryClient is closed") end
    count_request(client)
    local t0 = core.now()
    local response, err = send_plain(client, spec, t0, 1)
    return go_on(response, err, t0, core.now() - t0)
  end
  local waits = fixed_waits(options, MAX_DRIVEN_ATTEMPTS)
  return send, { spec = spec, stands = stands, go_on = go_on,
    client = client, waits = waits and #waits > 0 and waits or nil,
    verdicts = verdicts }
end

-- The functions prepare made: they spawn no task, so a load can count a
-- request's attempts by the coroutine that called it (load.lua). A plain
-- one's value is its parts, for a load that runs its requests in C
-- (core.driver): the request table, `stands(response, status)` and
-- `verdicts()` (stands' answer for every status 100 to 599),
-- `go_on(response, err, t0, elapsed, n, history, previous_wait)`, the
-- rest of a request from the outcome of its attempt n, as its function
-- goes on, the client (whose counters the load adds the driver's
-- requests and attempts to), and `waits`, strategies.fixed_waits' list
-- when there is one: the driver then makes the retries of a retried
-- status itself.
local prepared = setmetatable({}, { __mode = "k" })

local function prepare(client, list, options, call, specs)
  local send, parts = sender(client, list, options, call, specs)
  prepared[send] = parts or true
  return send
end

local function is_prepared(fn)
  return prepared[fn] ~= nil
end

-- The parts of a prepared plain request's function (above), or nil.
local function plain_parts(fn)
  local parts = prepared[fn]
  if parts ~= true then return parts end
end

-- Whether `options` can serve a request now: client.retry_options is
-- live, so it may have been set to anything, and a strategy's fields too.
local function check_options(options)
  if not strategies.is_options(options) then
    invalid("retry_options must be retry options (e.g. "
      .. "retry.ExponentialRetry{}), got " .. describe(options))
  end
  strategies.check_live(options, "retry_options")
end

-- The retry loop over a list of RequestParams (entry n for attempt n, the
-- last one after the list runs out): attempt, decide, act. Fields of
-- `options` are read at every step, so changes to a shared strategy take
-- effect on the next request. `specs`, the request tables of the list, are
-- made here unless the caller has them.
local function execute(client, list, options, call, specs)
  check_options(options)
  return execute_checked(client, list, options, call, specs)
end

--[[ A script's client request, checked (check_options), as core.request
needs it (src/lua_run.h): spec, attempts, options, list, call, specs,
where spec (the first attempt's request table) and attempts (the
strategy's, more than one) are there only when core.request can make its
attempts. ]]
local function plan(client, list, options, call, specs)
  check_options(options)
  local attempts = runs_in_c(client, list, options, call)
    and fixed_attempts(options, MAX_DRIVEN_ATTEMPTS)
  if attempts and attempts > 1 then
    specs = specs or specs_for(client, list)
    return specs[1], attempts, options, list, call, specs
  end
  return nil, nil, options, list, call, specs
end

-- judge's response: retry_reason reads its status alone (no callback is
-- asked, runs_in_c) and keeps nothing of it, so one table serves.
local probe = {}

-- What core.request asks of Lua (src/lua_run.h); client.lua adds `plan`.
M.request_helpers = {
  -- After attempt n of a run with room for `room` attempts, answered 0
  -- (the response stands), 1 (retried) or 2 (the Lua loop goes on): the
  -- client's settings and the strategy's attempts are read again, as the
  -- Lua loop reads them at every attempt (src/lua_run.c's JUDGED_*).
  judge = function(client, options, spec, status, n, room)
    local attempts = attempts_of(options)
    if attempts > room or not client_runs_in_c(client, options)
        or not fixed_attempts(options, MAX_DRIVEN_ATTEMPTS) then
      return 2
    end
    if n >= attempts then return 0 end
    probe.status = status
    return retry_reason(options, spec.method, probe, nil, false, true)
      and 1 or 0
  end,
  -- Whether the request's next attempt can still be made in C: its
  -- client's settings may have changed during the wait.
  still = client_runs_in_c,
  -- The wait before attempt n + 1, as plan_retry reads it: a strategy
  -- fixed_attempts passed needs nothing but n.
  wait = function(options, n)
    return check_wait(options:get_timeout(n), "retry_options: get_timeout("
      .. n .. ") returned")
  end,
  enqueue = function(s, handle) return s:enqueue(handle) end,
  release = function(s) s:release() end,
  abandon = function(s, entry) s:abandon(entry) end,
  after = run_after_c,
}
M.plan, M.execute_checked = plan, execute_checked

M.execute, M.prepare, M.is_prepared = execute, prepare, is_prepared
M.plain_parts = plain_parts
M.check_options, M.specs_for = check_options, specs_for
return M
