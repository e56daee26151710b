--- retry.load (contract section 9): many requests at once and a Result of
-- what happened. Two load models:
-- * closed: `concurrency` workers, each starting its next request when the
--   last one ended, for `requests` in all or for `duration` seconds;
-- * open: requests started at `rate` per second whatever the server does.
--   Each request's latency counts from its scheduled start, so a server
--   that stalls shows it in the latency instead of receiving fewer
--   requests (no coordinated omission); `concurrency` caps the requests
--   in flight, and a request that had to wait for the cap started late.
-- Every request that starts ends as a response or an error in the figures,
-- also when the load is interrupted (Ctrl-C) or cut at the end of its
-- duration.
local attempt_mod = require("retry.attempt")
local client_mod = require("retry.client")
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local loop = require("retry.loop")
local progress = require("retry.progress")
local result = require("retry.result")
local slots = require("retry.slots")
local task = require("retry.task")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe
local running = coroutine.running

M.DEFAULT_CONCURRENCY = 10 -- closed model workers, as wrk's -c
M.DEFAULT_IN_FLIGHT = 1000 -- open model cap on requests in flight
M.DEFAULT_DURATION = 10 -- seconds, when neither requests nor duration is set
M.DEFAULT_GRACE = 10 -- seconds requests in flight at the end of a duration
-- get before they are cancelled
M.MAX_RATE = 1e6 -- requests per second: far beyond what one loop can start
-- Requests at a time: each holds a task (and in the closed model a worker
-- made up front) and a connection, some 20 KB; a million is 20 GB.
M.MAX_CONCURRENCY = 1000000
-- How many requests a worker or the scheduler starts without giving the
-- loop a turn, when none of them had to wait.
local BURST = 64

--- Set by the host: `lretry --json FILE` and `--quiet` apply to every load.
M.defaults = { json = nil, quiet = false }

--- What the host exits with once the script ends: 130 after a load was
-- interrupted, else 2 after a load crossed a threshold, else 0.
M.exit_status = 0

--- Set once a load was interrupted (Ctrl-C or SIGTERM): later loads refuse
-- to start, so one Ctrl-C stops a script that runs several. M.signal is
-- the signal's number (2 or 15).
M.interrupted = false

--- The most threads a load may have (src/threads.c's limit).
M.MAX_THREADS = 1024

-- The status codes of checks made by status_check: a load whose requests
-- run in C (driven_worker) checks those responses without calling Lua.
local status_codes = setmetatable({}, { __mode = "k" })

--- A check that passes a response whose status is a key of `allowed`
-- (`lretry load --expect`).
function M.status_check(allowed)
  local function check(response) return allowed[response.status] == true end
  status_codes[check] = allowed
  return check
end

--- retry.load calls so far in this state: a worker thread runs the share
-- of the call with the number the main thread gave it. A load started
-- while another runs (from its request or check function) is not counted:
-- it runs on its own thread's loop only.
M.calls = 0

--- Loads running in this state now.
M.running = 0

-- Counts a load as running until the value it returns is closed.
local function load_running()
  M.running = M.running + 1
  return setmetatable({}, { __close = function()
    M.running = M.running - 1
  end })
end

--- In a worker thread of a load with `threads` (set by become_worker):
-- { index, count, share = {seq, concurrency, requests, rate, progress},
-- hand_over, wait_stop, publish, claim, start } (src/threads.h). nil in
-- the main thread.
M.worker = nil

--- What a worker thread's script ends with once its share is handed over.
M.WORKER_DONE = setmetatable({}, {
  __name = "retry.load.worker_done",
  __tostring = function()
    return "this worker thread's share of the load is done"
  end,
})

local FIELDS = { client = true, url = true, request = true, check = true,
  concurrency = true, requests = true, duration = true, rate = true,
  thresholds = true, grace = true, quiet = true, json = true, label = true,
  threads = true }

local function check_count(v, name, min)
  if v == nil then return nil end
  if math.type(v) ~= "integer" and not (type(v) == "number"
      and v == math.floor(v) and v < 2^53) or v < min then
    invalid("retry.load: " .. name .. " must be an integer >= " .. min
      .. ", got " .. describe(v))
  end
  return math.tointeger(v)
end

local function check_spec(spec)
  if type(spec) ~= "table" then
    invalid("retry.load: expected a table of settings, got "
      .. describe(spec))
  end
  for k in pairs(spec) do
    if not FIELDS[k] then
      invalid("retry.load: unknown setting " .. describe(k))
    end
  end
  local concurrency = check_count(spec.concurrency, "concurrency", 1)
  if concurrency and concurrency > M.MAX_CONCURRENCY then
    invalid(("retry.load: concurrency must be at most %d (each request at a "
      .. "time holds a task and a connection), got %d"):format(
      M.MAX_CONCURRENCY, concurrency))
  end
  local s = {
    concurrency = concurrency,
    requests = check_count(spec.requests, "requests", 0),
    duration = values.check_seconds(spec.duration, "retry.load: duration"),
    rate = spec.rate, grace = values.check_seconds(spec.grace,
      "retry.load: grace", true) or M.DEFAULT_GRACE,
    client = spec.client, url = spec.url, request = spec.request,
    check = spec.check, quiet = spec.quiet, json = spec.json,
    label = spec.label, threads = check_count(spec.threads, "threads", 1),
  }
  if s.rate ~= nil and (type(s.rate) ~= "number" or s.rate ~= s.rate
      or s.rate <= 0 or s.rate > M.MAX_RATE) then
    invalid(("retry.load: rate must be a number of requests per second, "
      .. "more than 0 and at most %g, got %s"):format(M.MAX_RATE,
      describe(s.rate)))
  end
  if s.client ~= nil
      and getmetatable(s.client) ~= client_mod.RetryClient_class then
    invalid("retry.load: client must be a retry.RetryClient, got "
      .. describe(s.client))
  end
  if s.client and s.client.closed then
    invalid("retry.load: the client is closed")
  end
  values.check_type(s.url, "string", "retry.load: url")
  values.check_type(s.label, "string", "retry.load: label")
  values.check_type(s.json, "string", "retry.load: json")
  values.check_type(s.quiet, "boolean", "retry.load: quiet")
  for _, name in ipairs({ "request", "check" }) do
    if s[name] ~= nil and not values.is_callable(s[name]) then
      invalid("retry.load: " .. name .. " must be a function, got "
        .. describe(s[name]))
    end
  end
  if s.request == nil and s.url == nil then
    invalid("retry.load: give a url, or a request function")
  end
  if s.request == nil then
    -- Every request would be refused: a load of nothing but `invalid`
    -- errors, as fast as the loop can make them, for its whole duration.
    local base = s.client and s.client.base_url
    local bad = core.check(http.make_spec("GET",
      attempt_mod.join_url(type(base) == "string" and base or nil, s.url),
      {}))
    if bad then invalid("retry.load: " .. bad .. ", got " .. describe(s.url)) end
    -- So would a client of the script's whose settings every request is
    -- checked against (a field set to a bad value, attempts = 0).
    if s.client then
      local fit, err = pcall(client_mod.prepare, s.client, "GET", s.url)
      if not fit then
        if not errors.is_error(err, "invalid") then error(err, 0) end
        invalid("retry.load: client: " .. err.message)
      end
    end
  end
  s.limits = result.check_thresholds(spec.thresholds,
    "retry.load: thresholds", s.check ~= nil)
  return s
end

-- Stop starting requests (`why`: "duration", "interrupt", "closed" for a
-- closed client, "cancel" for a cancelled load); with `cancel_why`, also
-- cancel those in flight, which end as `cancelled` errors with that
-- message.
local function stop(L, why, cancel_why)
  if not L.stopping then
    L.stopped_at, L.stopped_by = core.now(), why
  end
  L.stopping = true
  local driver = L.driver
  if driver then driver:stop() end
  if not cancel_why then return end
  L.cancelled_why = L.cancelled_why or cancel_why
  if driver then driver:cancel() end
  for _, w in ipairs(L.workers) do w:cancel() end
  for t in pairs(L.live) do t:cancel() end
end

-- What a request's attempts are counted under (begin, record, on_attempt):
-- the task it runs in, whose attempts include those of the tasks it
-- spawns; for a prepared request, which spawns none, its coroutine, found
-- with one call.
local function counter_key(L)
  if L.prepared then return (running()) end
  return task.current()
end

--[[ One request of the load, in two halves around the request function,
whose wait sits on top of them: counting starts, then `record` takes the
outcome of `pcall(L.request, L.client, i)`. `start` is when the request
started, or in the open model when it was due to. record returns how many
attempts it sent. Under the wait, the worker holds only its request
number, its start and the load: a RetryClient request in flight then fits
its task's stack in 80 slots, where one more frame of the load made Lua
double it to 160 (1.3 KB a request in flight). ]]
local function begin(L)
  local me = counter_key(L)
  L.counts[me] = 0
  -- Tasks spawned from now on are this request's (see on_attempt); a
  -- prepared request spawns none.
  if not L.prepared then L.since[me] = task.spawned() end
end

-- An error value as text for the summary, even one whose __tostring
-- raises: the request it ended must still be counted.
local function shown(e)
  local ok, text = pcall(tostring, e)
  if ok then return text end
  return describe(e) .. " (its __tostring raised)"
end

-- Run the load's check, if any, on the response r of a request.
local function check(L, r)
  if not L.check then return end
  local checked, passed = pcall(L.check, r)
  if checked then
    L.recorder:check(passed and true or false)
  elseif L.cancelled_why and errors.is_error(passed, "cancelled") then
    -- Cut by the load itself (Ctrl-C, the end of its grace) before it
    -- decided: not a check of the response, passed or failed.
    return
  else
    L.recorder:check(false, "the check raised: " .. shown(passed))
  end
end

local function record(L, start, ok, r)
  local me = counter_key(L)
  local attempts = L.counts[me]
  -- Tasks the request left running still count their attempts, in the
  -- totals only.
  L.counts[me] = false
  local rec = L.recorder
  if ok and core.is_response(r) then
    -- The transfer's own end, taken in C, not when this task resumed.
    local _, at = core.transfer_times(r)
    rec:finished(at, at - start, attempts, r.status)
    check(L, r)
    r:close()
    return attempts
  end
  local kind, message, at
  if ok then
    kind, message = "invalid", "the request function returned "
      .. describe(r) .. ", not a Response"
  elseif errors.is_error(r) then
    kind, message, at = r.kind, r.message, r.finished_at
  else
    kind, message = "script", shown(r)
  end
  at = at or core.now()
  local latency = at - start
  if kind == "cancelled" and L.cancelled_why then
    -- Cut by the load itself: counted, but how long it had run says
    -- nothing about the server.
    message, latency = L.cancelled_why, nil
  end
  rec:finished(at, latency, attempts, nil, kind, message)
  return attempts
end

local function one(L, i, start)
  begin(L)
  local ok, r = pcall(L.request, L.client, i)
  return record(L, start, ok, r)
end

-- Workers and requests never raise: what they record is their result, so
-- an error an await sees is the awaiting task's own cancel.
local function closed_worker(L)
  while not L.stopping and L.started_count < L.total do
    local now = core.now()
    if L.ends and now >= L.ends then break end
    if L.client.closed then
      stop(L, "closed")
      break
    end
    local i = L.started_count + 1
    -- In a worker thread, the request numbers come from the load's count
    -- shared by every thread (src/threads.c).
    if L.claim then
      i = L.claim()
      if i == nil then break end
    end
    L.started_count = L.started_count + 1
    -- one(L, i, now), inline (see begin).
    begin(L)
    local done, r = pcall(L.request, L.client, i)
    local ok, sent = pcall(record, L, now, done, r)
    -- A request that sent nothing (refused by an open breaker, a script
    -- error) never waited: give the loop a turn, or this worker would
    -- spin without the timers, Ctrl-C or the other workers running.
    if ok and sent == 0 then pcall(core.sleep, 0) end
  end
end

--[[ A closed-model load of a prepared plain request (loop.plain_parts)
runs in C: a driver (core.driver, src/lua_drive.c) starts `slots`
requests at a time. A request whose attempts end in responses the policy
retries (with waits that depend on the attempt's number alone: parts.waits)
or lets stand needs no task at all; the driver records it and hands its
counts over as tallies (and the response to a checker task, when the
load's check is a Lua function, which may wait as any check can). Any
other attempt (an error, a status not yet learned, a Retry-After) goes on
in a task of its own, driven_request, as the rest of its request, while
its slot waits. The load's stop reaches the driver through L.driver (stop,
cancel). ]]
local function driven_request(L, d, parts, slot, started, elapsed, n,
    history, previous_wait, response, ...)
  local me = task.current()
  L.live[me] = true
  begin(L)
  -- The attempts the driver made before this one.
  L.counts[counter_key(L)] = n - 1
  local err
  if response then
    local status = response.status
    d:learn(status, parts.stands(response, status))
  else
    err = http.error_of(parts.spec, ...)
  end
  local ok, r = pcall(parts.go_on, response, err, started, elapsed, n,
    history, previous_wait)
  pcall(record, L, started, ok, r)
  L.live[me] = nil
  d:free(slot)
end

-- A task that runs the load's check on the responses the driver hands it,
-- then waits for the next: a check that waits holds up its own slot only,
-- as in a load whose requests run in Lua, while the driver's task goes on.
-- Idle checkers wait in L.checkers; nothing more to check ends them.
local function checker(L, d, slot, r)
  local me = task.current()
  L.live[me] = true
  while slot do
    check(L, r)
    r:close()
    d:free(slot)
    local idle = L.checkers
    idle[#idle + 1] = me.handle
    local ok
    ok, slot, r = pcall(core.park, "a load's check")
    if not ok then break end
  end
  L.live[me] = nil
end

-- Give a "check" event's response to an idle checker, or a new one.
local function hand_check(L, d, slot, r)
  local idle = L.checkers
  for i = #idle, 1, -1 do
    local handle = idle[i]
    idle[i] = nil
    -- One that a cancel woke is no longer waiting.
    if core.wake(handle, slot, r) then return end
  end
  task.spawn(checker, L, d, slot, r)
end

-- One event of the driver, as pcall(d.next, d) gives it; false once every
-- request has ended.
local function on_driver_event(L, d, parts, ok, event, ...)
  if not ok then
    -- This task's cancel (the load's stop cancels its workers): the
    -- driver has cut what it had in flight, which its next events count.
    if errors.is_error(event, "cancelled") then return true end
    d:cancel()
    error(event, 0)
  end
  if event == nil then return false end
  local rec = L.recorder
  if event == "tally" then
    local t = ...
    L.started_count = L.started_count + t.started
    -- As send and the retry loop count them.
    local counters = parts.client.counters
    counters.requests = counters.requests + t.started
    counters.attempts = counters.attempts + t.attempts_started
    if t.retried > 0 then
      counters.retries = counters.retries + t.retried
      local by = counters.retries_by_reason
      by.status = (by.status or 0) + t.retried
    end
    rec:tally(t)
  elseif event == "slow" then
    task.spawn(driven_request, L, d, parts, ...)
  elseif event == "check" then
    hand_check(L, d, ...)
  elseif event == "cut" then
    local n, at, in_flight, resent, retries, attempts = ...
    rec:cut(n, at, "cancelled", L.cancelled_why, in_flight, resent, retries,
      attempts)
  end
  return true
end

local function driven_worker(L, parts, slots_count)
  local rec = L.recorder
  local d = core.driver(parts.spec, {
    slots = slots_count, total = L.total ~= math.huge and L.total or nil,
    ends = L.ends, claim = L.claim, started = rec.started,
    check = L.check, codes = status_codes[L.check], waits = parts.waits,
    stands = parts.verdicts(),
    latency = rec.latency, attempt_latency = rec.attempt_latency,
    second_latency = rec.second_latency,
  })
  L.driver, L.checkers = d, {}
  if L.stopping then d:stop() end
  while on_driver_event(L, d, parts, pcall(d.next, d)) do end
  for _, handle in ipairs(L.checkers) do core.wake(handle) end
end

local function open_request(L, i, due)
  pcall(one, L, i, due)
  L.cap:release()
  L.live[task.current()] = nil
end

-- Start request i at L.started + (i - 1) / rate, whatever the ones before
-- it are doing (+ L.phase: worker thread k of n starts the requests k,
-- k + n... of the whole load's schedule).
local function open_scheduler(L)
  local interval = 1 / L.rate
  local burst = 0
  while not L.stopping and L.started_count < L.total do
    if L.client.closed then
      stop(L, "closed")
      break
    end
    local i = L.started_count + 1
    local due = L.started + L.phase + (i - 1) * interval
    if L.ends and due >= L.ends then
      L.stopped_by = L.stopped_by or "duration"
      break
    end
    -- A sleep ends at its time or some microseconds after (the clock is
    -- a timerfd): the request goes out on time, never before.
    local wait = due - core.now()
    if wait > 0 then
      core.sleep(wait)
      burst = 0
    elseif burst >= BURST then
      -- Behind schedule: the requests started must get to run, and
      -- Ctrl-C must be heard.
      core.sleep(0)
      burst = 0
    end
    burst = burst + 1
    -- The client may have been closed while this slept.
    if L.client.closed then stop(L, "closed") end
    if L.stopping then break end
    if not L.cap:try_take() then
      L.cap:acquire()
      -- Or while this waited for a request in flight to end.
      if L.client.closed then stop(L, "closed") end
    end
    if L.stopping then L.cap:release(); break end
    local now = core.now()
    if now - due > result.LATE_AFTER then
      L.recorder.late = L.recorder.late + 1
    end
    L.started_count = i
    -- From when it was due, or from when it started if that was earlier.
    -- Worker thread k of n numbers its requests k, k + n, k + 2n...
    L.live[task.spawn(open_request, L, (i - 1) * L.stride + L.offset,
      math.min(due, now))] = true
  end
end

-- Requests due before the load stopped that never started (held back by
-- the cap) are dropped: counted, so a slow server cannot hide them. A load
-- cut short (Ctrl-C, its client closed, its task cancelled) owes only the
-- requests that were already late when it stopped: one due a moment
-- before would have started on time, had the stop not come first (in a
-- worker thread, the stop arrives from the main thread a little later).
local function count_dropped(L)
  local stop_at = L.stopped_at or core.now()
  if L.ends and stop_at > L.ends then stop_at = L.ends end
  if L.stopped_by ~= "duration" and L.stopped_by ~= nil then
    stop_at = stop_at - result.LATE_AFTER
  end
  -- The requests due before stop_at, by the scheduler's own arithmetic
  -- (started + (i - 1) * interval), so rounding cannot invent one.
  local interval = 1 / L.rate
  local first = L.started + L.phase
  local due = math.max(0, math.floor((stop_at - first) * L.rate))
  while due > 0 and first + (due - 1) * interval >= stop_at do
    due = due - 1
  end
  while first + due * interval < stop_at do due = due + 1 end
  due = math.min(L.total, due)
  L.recorder.dropped = math.tointeger(math.max(0, due - L.started_count))
end

-- Seconds after the load cancels its requests (the grace is over, or
-- Ctrl-C) when it says on stderr which are still running, and why.
M.STUCK_AFTER = 1

-- The load's requests still running: its workers, or in the open model
-- the requests' own tasks.
local function running_count(L)
  local n = 0
  if not L.cap then -- the open model's one worker is its scheduler
    for _, w in ipairs(L.workers) do
      if not w.done then n = n + 1 end
    end
  end
  for _ in pairs(L.live) do n = n + 1 end
  return n
end

-- Cancel the requests still running (`why`), again every 0.1 s: a request
-- function that catches one cancel is cancelled by the next. One that
-- catches every cancel never ends; after STUCK_AFTER s the user is told
-- why the load does not, once per load (`when`: when the load cancelled
-- them; `presses`: the Ctrl-Cs that end the process from there).
local function cancel_until_done(L, by, why, when, presses)
  local since = core.now()
  while true do
    stop(L, by, why)
    core.sleep(0.1)
    if not L.told_stuck and core.now() - since >= M.STUCK_AFTER then
      L.told_stuck = true
      local n = running_count(L)
      if n > 0 then
        io.stderr:write(("lretry load: %d request%s still running %g s "
          .. "after the load cancelled them %s: the request function "
          .. "catches the `cancelled` error (a pcall around a request) and "
          .. "goes on; let that error through. %s ends the process.\n")
          :format(n, n == 1 and " is" or "s are", M.STUCK_AFTER, when,
            presses))
      end
    end
  end
end

local function timekeeper(L)
  core.sleep(math.max(0, L.ends - core.now()))
  stop(L, "duration")
  core.sleep(L.grace)
  cancel_until_done(L, "duration", ("still in flight %g s after the "
    .. "load's duration ended (grace)"):format(L.grace),
    "at the end of its grace", "Ctrl-C twice")
end

-- What an interrupting signal is called in messages (0: a worker thread's
-- load stopped by the main thread for another reason, a failed thread).
local function signal_name(signum)
  if signum == 0 then return "the main thread" end
  return signum == 15 and "SIGTERM" or "Ctrl-C"
end

-- Ctrl-C or SIGTERM: the main thread watches them itself; a worker
-- thread's load is stopped by the main thread's (src/threads.c).
local function on_interrupt(L)
  local signum
  if M.worker then
    M.worker.wait_stop(task.current().handle)
    signum = M.worker.stop_signal()
  else
    local op = core.interrupt()
    core.wait(nil, op)
    signum = core.result(op)
    M.interrupted, M.signal = true, signum
  end
  L.interrupted = true
  local name = signal_name(signum)
  cancel_until_done(L, "interrupt", "cancelled by " .. name, "on " .. name,
    "A second " .. (signum == 15 and "SIGTERM" or "Ctrl-C"))
end

-- A worker thread's counters, for the main thread's progress line.
local function publisher(L)
  local publish = M.worker.publish
  while true do
    core.sleep(progress.INTERVAL / 2)
    local rec = L.recorder
    if rec then
      publish(rec.requests, rec.errors, rec.retries, L.started_count)
    end
  end
end

-- Await a worker or request task. One the load cancelled before it ever
-- ran (a worker thread's load stopped as it began) ends with that cancel,
-- which is no error of the load's; this task's own cancel is.
local function await_one(L, t)
  local ok, err = pcall(t.await, t)
  if not ok and not (t.done and L.cancelled_why
      and errors.is_error(err, "cancelled")) then
    error(err, 0)
  end
end

local function await_all(L)
  for _, w in ipairs(L.workers) do await_one(L, w) end
  while true do
    local t = next(L.live)
    if t == nil then break end
    await_one(L, t)
    L.live[t] = nil
  end
end

local function default_request(url)
  return function(client) return client:get(url) end
end

local function describe_load(s)
  if s.label then return s.label end
  if s.url and s.request == nil then return "GET " .. s.url end
  return "script"
end

-- A load's helper tasks (interrupt watcher, timekeeper, progress line)
-- end before it returns: cancelled and, unless the load's own task was
-- cancelled, awaited (one loop turn). Until they end they hold the load,
-- its workers and their coroutine stacks: some 2 KB per worker.
local function end_helpers(helpers, wait)
  for _, h in ipairs(helpers) do h:cancel() end
  if not wait then return end
  for _, h in ipairs(helpers) do pcall(h.await, h) end
end

local function duration_of(s)
  if s.duration == nil and s.requests == nil then return M.DEFAULT_DURATION end
  return s.duration
end

-- Run the load of the checked spec `s` on this thread's loop. `o` says
-- what to run (the whole load, or a worker thread's share): concurrency,
-- requests, rate, duration; quiet (no progress line) and publish (a
-- worker's counters, for the main thread's line); in a worker thread,
-- claim (the closed model's request numbers, shared by the threads) or
-- stride, offset and phase (the open model's: worker k of n starts the
-- whole load's requests k, k + n..., numbered so, (k - 1) / rate after the
-- first), and start (the threads' common start, src/threads.c). Returns
-- the Result.
local function run(s, o)
  local _ <close> = load_running()
  local open = o.rate ~= nil
  local concurrency, duration = o.concurrency, o.duration
  local client, own_client = s.client, false
  if client == nil then
    -- With a url and no request function, nothing but the workers sends
    -- on it: they are never more than `concurrency`, and a limit would
    -- only cost each attempt a slot taken and given back.
    client = client_mod.RetryClient{
      limit = s.request == nil and 0 or concurrency }
    own_client = true
  end
  local capped_by
  if client.limit > 0 and client.limit < concurrency then
    capped_by = client.limit
  end
  -- The load's own client and its requests are out of any script's
  -- reach: checked once, not before every request.
  local request = s.request
  if request == nil then
    -- check_spec refused a url the client would (an empty one): should
    -- prepare refuse it all the same, each request fails as an `invalid`
    -- error, as with a client of the script's.
    local prepared, send = false, nil
    if own_client then
      prepared, send = pcall(client_mod.prepare, client, "GET", s.url)
    end
    request = prepared and send or default_request(s.url)
  end
  -- started, ends and recorder are set once the workers exist.
  local L = {
    client = client, request = request,
    check = s.check, total = o.requests or math.huge, duration = duration,
    grace = s.grace, rate = o.rate, started_count = 0,
    counts = setmetatable({}, { __mode = "k" }),
    since = setmetatable({}, { __mode = "k" }), workers = {},
    live = {}, stopping = false, interrupted = false,
    cap = open and slots.new(concurrency) or nil,
    claim = o.claim, stride = o.stride or 1, offset = o.offset or 1,
    phase = o.phase or 0,
    -- A prepared request (client.prepare) spawns no task (see counter_key).
    prepared = client_mod.is_prepared(request),
  }
  -- Attempts count for this load only when made by one of its requests,
  -- or by a task one of them spawned. A closed worker makes one request
  -- after another: a task spawned by an earlier one, still running, counts
  -- in the totals only, not in the request the worker is making now.
  local function on_attempt(record, response)
    if L.prepared then
      local me = running()
      local n = L.counts[me]
      if n == nil then return end
      if n then L.counts[me] = n + 1 end
      L.recorder:attempt(record, response, L.cancelled_why and not response
        and errors.is_error(record.error, "cancelled"))
      return
    end
    local t, child = task.current(), nil
    while t and L.counts[t] == nil do t, child = t.parent, t end
    if t == nil then return end
    local n = L.counts[t]
    if n and (child == nil or child.serial > L.since[t]) then
      L.counts[t] = n + 1
    end
    -- An attempt the load cut itself has no latency worth recording.
    local cut = L.cancelled_why and not response
      and errors.is_error(record.error, "cancelled")
    L.recorder:attempt(record, response, cut)
  end
  client.recorders[on_attempt] = true
  local helpers = { task.spawn(on_interrupt, L) }
  if duration then helpers[#helpers + 1] = task.spawn(timekeeper, L) end
  if o.publish then helpers[#helpers + 1] = task.spawn(publisher, L) end
  local line = not o.quiet and progress.new(L) or nil
  if line then helpers[#helpers + 1] = task.spawn(progress.run, line) end
  -- A request its driver could not send (a url that is not one) goes the
  -- Lua way, where each attempt fails as an `invalid` error.
  local parts = not open and loop.plain_parts(request)
  if parts and core.check(parts.spec) then parts = nil end
  if open then
    L.workers[1] = task.spawn(pcall, open_scheduler, L)
  elseif parts and L.total >= 1 then
    L.workers[1] = task.spawn(driven_worker, L, parts,
      math.min(concurrency, L.total))
  else
    for w = 1, math.min(concurrency, L.total) do
      L.workers[w] = task.spawn(closed_worker, L)
    end
  end
  -- The clock starts once the workers exist (none has run yet): making
  -- 100,000 of them takes a while, which must not eat the duration. In a
  -- worker thread it starts when every thread is ready (o.start blocks
  -- until then), so that the threads' durations, schedules and timelines
  -- are one run's, however late the last thread got going.
  local started = o.start and o.start() or core.now()
  L.started, L.recorder = started, result.recorder(started)
  L.ends = duration and started + duration
  local ok, err = pcall(await_all, L)
  if not ok then -- this task was cancelled: so are they
    stop(L, "cancel", "the task running the load was cancelled")
  end
  end_helpers(helpers, ok)
  if line then progress.clear(line) end
  local turned, cancel = true, nil
  if own_client then
    client:close()
    -- Tasks the requests left running report the attempts the close cut
    -- as they end, on the loop's next turn: still this load's. A cancel
    -- of this task that comes meanwhile is raised once they have.
    turned, cancel = pcall(core.sleep, 0)
  end
  client.recorders[on_attempt] = nil
  if not ok then error(err, 0) end
  if not turned then error(cancel, 0) end
  if open then count_dropped(L) end
  -- A load that ran its whole duration lasted that long, however early
  -- its last request ended: an open model's rate is its own.
  local took = core.now() - started
  if L.stopped_by == "duration" then took = math.max(took, duration) end
  return L.recorder:result{
    duration = took, model = open and "open" or "closed",
    concurrency = concurrency, rate = o.rate, label = describe_load(s),
    limits = s.limits, interrupted = L.interrupted, capped_by = capped_by,
  }
end

-- The k-th of n parts of total, as even as can be: they add up to total.
local function part(total, n, k)
  return total // n + (k <= total % n and 1 or 0)
end

-- What progress.lua reads of a load, for the main thread of a load with
-- threads: the counters the workers publish, added up.
local function threads_view(group, s, o)
  local view = { total = s.requests or math.huge, stopping = false }
  view.recorder = setmetatable({}, {
    __index = function(_, k) return group:progress()[k] end,
  })
  -- The load's clock starts when every thread is ready (w.start), which
  -- takes a while with hundreds of them: until then it reads 0.
  return setmetatable(view, {
    __index = function(_, k)
      if k == "started_count" then return group:progress().started end
      if k == "started" then return group:start_time() or core.now() end
      if k == "ends" then
        return o.duration and (group:start_time() or core.now()) + o.duration
      end
    end,
  })
end

-- What every thread's share of a load must agree on, as "name=value"
-- texts: the threads run the same script, whose loads must be the same in
-- each (a script using threads is deterministic up to its loads).
local function settings_of(s)
  local function text(v)
    if type(v) == "number" then return ("%.17g"):format(v) end
    return v == nil and "none" or tostring(v)
  end
  return { "url = " .. text(s.url), "duration = " .. text(duration_of(s)),
    "requests = " .. text(s.requests), "rate = " .. text(s.rate),
    "concurrency = " .. text(s.concurrency), "grace = " .. text(s.grace),
    "request = " .. type(s.request), "check = " .. type(s.check) }
end

-- Texts <-> the one word of a share (src/threads.c passes it as is):
-- each text in hex, joined by dots, after an "x", so that the word
-- neither splits nor reads as a number, whatever bytes the texts hold.
local function to_word(texts)
  local hex = {}
  for i, text in ipairs(texts) do
    hex[i] = text:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  end
  return "x" .. table.concat(hex, ".")
end

local function from_word(word)
  local texts = {}
  for hex in word:sub(2):gmatch("[^.]*") do
    texts[#texts + 1] = hex:gsub("%x%x", function(h)
      return string.char(tonumber(h, 16))
    end)
  end
  return texts
end

-- A script's client's limit on connections, `limit` or `limit_per_host`
-- (0: none, or no client). The client checks its settings before its
-- first request; here anything but a count is 0.
local function client_limit_of(s, field)
  local limit = s.client and s.client[field or "limit"]
  return math.type(limit) == "integer" and limit > 0 and limit or 0
end

-- "3, 5-9, 12": thread numbers in ascending order, runs as ranges.
local function number_ranges(numbers)
  local parts, i = {}, 1
  while i <= #numbers do
    local j = i
    while j < #numbers and numbers[j + 1] == numbers[j] + 1 do j = j + 1 end
    parts[#parts + 1] = j > i + 1 and numbers[i] .. "-" .. numbers[j]
      or j == i + 1 and numbers[i] .. ", " .. numbers[j] or tostring(numbers[i])
    i = j + 1
  end
  return table.concat(parts, ", ")
end

-- One line per distinct reason, in the order of the first thread that gave
-- it: when memory or the thread limit runs out, hundreds of threads fail
-- for two or three reasons, and the ones stopped because of them all say
-- the same. Lines after the first are indented under it.
local function describe_failures(failures, n)
  local order, threads_of = {}, {}
  for _, f in ipairs(failures) do
    if not threads_of[f.message] then
      order[#order + 1] = f.message
      threads_of[f.message] = {}
    end
    table.insert(threads_of[f.message], f.thread)
  end
  local lines = {}
  for i, message in ipairs(order) do
    local threads = threads_of[message]
    lines[i] = ("%s %s of %d failed: %s"):format(
      #threads == 1 and "thread" or "threads", number_ranges(threads), n,
      message)
  end
  return table.concat(lines, "\n  ")
end

-- The main thread of a load with threads: start one OS thread per share,
-- each running this same script in a Lua state of its own (the host's
-- src/threads.c), watch Ctrl-C and draw the progress line while they run,
-- and add up the results they hand back.
local function threaded_load(s, o)
  local _ <close> = load_running()
  local loaded, threads = pcall(require, "retry.threads")
  if not loaded then
    invalid("retry.load: threads need the lretry program, which runs each "
      .. "thread's share of the load in a Lua state of its own")
  end
  local n = s.threads
  local tty = not o.quiet and core.isatty(2)
  local shares = {}
  for k = 1, n do
    local share = { "seq=" .. M.calls,
      "load=" .. to_word(settings_of(s)),
      "concurrency=" .. part(o.concurrency, n, k),
      "progress=" .. (tty and 1 or 0) }
    -- The closed model's threads claim the requests from one count as
    -- they go; the open model's each start their share on schedule.
    if s.rate then
      share[#share + 1] = ("rate=%.17g"):format(s.rate / n)
      if s.requests then
        share[#share + 1] = "requests=" .. part(s.requests, n, k)
      end
    end
    shares[k] = table.concat(share, " ")
  end
  local group, view
  local interrupted = false
  local function stop_group()
    view.stopping = true
    group:stop(M.signal)
  end
  local helpers = { task.spawn(function()
    local op = core.interrupt()
    core.wait(nil, op)
    interrupted, M.interrupted = true, true
    M.signal = core.result(op)
    if group then stop_group() end
  end) }
  -- The watcher takes Ctrl-C and SIGTERM before the threads start, which
  -- takes a while with hundreds of them.
  local turned, cancel = pcall(core.sleep, 0)
  if not turned then -- this task was cancelled: no thread has started
    end_helpers(helpers, false)
    error(cancel, 0)
  end
  group = threads.start(shares, not s.rate and s.requests or nil)
  view = threads_view(group, s, o)
  if interrupted then stop_group() end
  local line = not o.quiet and progress.new(view) or nil
  if line then helpers[#helpers + 1] = task.spawn(progress.run, line) end
  -- os.exit now would tear libcurl down under the running threads.
  local exit = os.exit
  os.exit = function(...)
    group:stop()
    group:join()
    return exit(...)
  end
  local me = task.current()
  local waited, err = pcall(function()
    local ended, stopped = 0, false
    while ended < n do
      ended = group:wait(me.handle, ended)
      -- One thread failed: the load has, so the others stop now.
      if not stopped and group:failed() then
        stopped = true
        group:stop()
      end
    end
  end)
  os.exit = exit
  end_helpers(helpers, waited)
  if line then progress.clear(line) end
  if not waited then -- this task was cancelled: so are the threads
    group:stop()
    group:join()
    error(err, 0)
  end
  local items = group:results()
  group:join()
  local results, failures = {}, {}
  for k, item in ipairs(items) do
    if item.error then
      failures[#failures + 1] = { thread = k, message = item.error }
    else
      results[k] = result.from_json(item.result, "thread " .. k)
    end
  end
  if #failures > 0 then
    error("retry.load: " .. describe_failures(failures, n), 0)
  end
  -- One run, whose requests several threads made.
  local r = result.merge(results, s.limits)
  r.merged, r.threads = nil, n
  r.concurrency, r.rate, r.label = o.concurrency, s.rate, describe_load(s)
  r.interrupted = r.interrupted or interrupted
  -- The threads split the client's limit as they split the concurrency
  -- (worker_load): it capped the load as it would have capped one thread.
  local limit = client_limit_of(s)
  if limit > 0 and limit < o.concurrency then r.capped_by = limit end
  return r
end

-- In a worker thread: run this thread's share of the load the main thread
-- started it for (number share.seq of the script's loads), hand the result
-- over and end the script there. A load the script runs before that one
-- ran in the main thread only: here it returns an empty result at once.
local function worker_load(s, w)
  if w.finished then error(M.WORKER_DONE, 0) end
  local share = w.share
  if M.calls < share.seq then
    return result.recorder(core.now()):result{ duration = 0,
      model = s.rate and "open" or "closed", concurrency = 0, rate = s.rate,
      label = describe_load(s) }
  end
  if M.calls ~= share.seq or s.threads ~= w.count then
    invalid(("retry.load: in worker thread %d of %d, load number %d of the "
      .. "script has threads = %s: every thread must run the same loads in "
      .. "the same order"):format(w.index, w.count, M.calls,
      tostring(s.threads)))
  end
  -- Each thread makes its own client: together they keep to its limit,
  -- split as the concurrency is (M.load refused a limit under threads).
  for _, field in ipairs({ "limit", "limit_per_host" }) do
    local limit = client_limit_of(s, field)
    if limit > 0 then
      s.client[field] = math.max(1, part(limit, w.count, w.index))
    end
  end
  local main = from_word(share.load)
  for i, mine in ipairs(settings_of(s)) do
    if mine ~= main[i] then
      invalid(("retry.load: in worker thread %d of %d, load number %d of "
        .. "the script has %s where the main thread's has %s: every thread "
        .. "must run the same loads in the same order"):format(w.index,
        w.count, M.calls, mine, tostring(main[i])))
    end
  end
  local r = run(s, { concurrency = share.concurrency,
    requests = share.requests, rate = share.rate, duration = duration_of(s),
    quiet = true, publish = share.progress == 1,
    claim = not share.rate and w.claim or nil, start = w.start,
    stride = w.count,
    offset = w.index, phase = s.rate and (w.index - 1) / s.rate })
  w.hand_over(r:to_json())
  w.finished = true
  -- The error below ends the script, unless a pcall catches it: the state
  -- sends nothing more either way.
  core.seal()
  error(M.WORKER_DONE, 0)
end

-- The exit status the host will use, and the JSON.
local function conclude(r, path)
  if r.interrupted then
    M.exit_status = 128 + (M.signal or 2)
  elseif not r.ok and M.exit_status == 0 then
    M.exit_status = 2
  end
  if path then
    local written, err = pcall(M.write_json, r, path)
    if not written then
      io.stderr:write("lretry: ", tostring(err.message or err), "\n")
      M.exit_status = math.max(M.exit_status, 1)
    end
  end
  return r
end

-- Open files a process needs beside its connections (its standard
-- streams, the loop's, a JSON file, the resolver's).
M.OPEN_FILES_SPARE = 32

-- A load of a url (or `lretry load`'s) at a concurrency over what the
-- open-file limit leaves for connections: each request in flight needs
-- one (HTTP/1.1), and those beyond would fail to connect. Said on stderr
-- rather than refused: the limit may be raised before the load gets there.
local function warn_open_files(s, concurrency)
  if s.url == nil and not client_mod.is_prepared(s.request) then return end
  -- An open model's default cap says nothing of what its rate needs.
  if s.rate ~= nil and s.concurrency == nil then return end
  -- The most that can be in flight: no more than the requests, nor than
  -- a script's client lets through.
  if s.requests then concurrency = math.min(concurrency, s.requests) end
  local client_limit = s.client and s.client.limit or 0
  if client_limit > 0 then concurrency = math.min(concurrency, client_limit) end
  local limit = core.open_file_limit()
  if limit and concurrency > limit - M.OPEN_FILES_SPARE then
    io.stderr:write(("retry.load: warning: concurrency %d needs as many "
      .. "connections, and the open-file limit (ulimit -n) is %d: "
      .. "requests beyond some %d in flight will fail to connect\n"):format(
      concurrency, limit, math.max(0, limit - M.OPEN_FILES_SPARE)))
  end
end

--- Run a load; returns a Result (lua/retry/result.lua). See the README,
-- "Load checks".
function M.load(spec)
  local s = check_spec(spec)
  local nested = M.running > 0
  if nested and (s.threads or 1) > 1 then
    invalid("retry.load: a load with threads cannot start while another "
      .. "load runs (from its request or check function, or beside it): "
      .. "its threads would run the script from the start")
  end
  if not nested then M.calls = M.calls + 1 end
  if M.worker and not nested then return worker_load(s, M.worker) end
  if M.interrupted then
    error(errors.new("cancelled", "retry.load: an earlier load was "
      .. "interrupted by " .. signal_name(M.signal) .. ", so no more start"),
      2)
  end
  if task.current() == nil then
    invalid("retry.load must be called inside a task: wrap the code in "
      .. "retry.run(function() ... end) (lretry runs scripts there)")
  end
  local open = s.rate ~= nil
  local concurrency = s.concurrency
    or (open and M.DEFAULT_IN_FLIGHT or M.DEFAULT_CONCURRENCY)
  local threads = s.threads or 1
  if threads > M.MAX_THREADS then
    invalid(("retry.load: threads must be at most %d, got %d"):format(
      M.MAX_THREADS, threads))
  end
  if threads > concurrency then
    invalid(("retry.load: threads (%d) must be at most the concurrency "
      .. "(%d): each thread runs at least one request at a time"):format(
      threads, concurrency))
  end
  for _, field in ipairs({ "limit", "limit_per_host" }) do
    local limit = client_limit_of(s, field)
    if threads > 1 and limit > 0 and limit < threads then
      invalid(("retry.load: threads (%d) must be at most the client's %s "
        .. "(%d): each thread runs its share on a client of its own, with "
        .. "its share of the %s"):format(threads, field, limit, field))
    end
  end
  warn_open_files(s, concurrency)
  if M.worker then
    -- Started from this worker's share (its request or check function): a
    -- load of this thread's own, whose result only the script sees.
    return run(s, { concurrency = concurrency, requests = s.requests,
      rate = s.rate, duration = duration_of(s), quiet = true })
  end
  local path = s.json or M.defaults.json
  if path and path ~= "-" then
    -- Found now rather than after the whole load has run, leaving a file
    -- that is there as it is (the load may be cancelled).
    local existing = io.open(path, "r")
    if existing then existing:close() end
    local f, err = io.open(path, "a")
    if not f then invalid("retry.load: cannot write the JSON: " .. err) end
    f:close()
    if not existing then os.remove(path) end
  end
  local quiet = s.quiet
  if quiet == nil then quiet = M.defaults.quiet end
  local o = { concurrency = concurrency, requests = s.requests,
    rate = s.rate, duration = duration_of(s), quiet = quiet }
  if threads > 1 then return conclude(threaded_load(s, o), path) end
  return conclude(run(s, o), path)
end

--- Make this state worker thread `w.index` of `w.count` of a load with
-- threads (called by the host, src/threads.c, before the script runs).
-- Only the main thread speaks: what a worker's script prints goes
-- nowhere, and os.exit ends the worker's script, not the process.
function M.become_worker(w)
  local share = {}
  for k, v in w.share:gmatch("(%w+)=(%S+)") do share[k] = tonumber(v) or v end
  w.share = share
  M.worker = w
  local null = assert(io.open("/dev/null", "w"))
  io.output(null)
  io.stdout = null
  _G.print = function() end
  os.exit = function()
    error(("os.exit was called in worker thread %d of %d, %s its share "
      .. "of the load: a worker thread cannot end the process"):format(
      w.index, w.count, M.calls > 0 and "during or after" or "before"), 2)
  end
end

--- Write a result's JSON to `path` ("-" for stdout); `who` names the
-- writer in an error ("retry.load" unless given).
function M.write_json(r, path, who)
  who = who or "retry.load"
  local text = r:to_json()
  local f, err
  if path == "-" then
    f = io.stdout
  else
    f, err = io.open(path, "w")
    if not f then invalid(who .. ": cannot write the JSON: " .. err) end
  end
  -- A full disk shows only when the buffer is written out: a run whose
  -- JSON did not reach its file must not look as if it had.
  local ok
  ok, err = f:write(text)
  if ok then ok, err = f:flush() end
  if f ~= io.stdout then
    local closed, close_err = f:close()
    if ok and not closed then ok, err = closed, close_err end
  end
  if not ok then
    invalid(who .. ": cannot write the JSON to " .. path .. ": "
      .. tostring(err))
  end
end

return M
