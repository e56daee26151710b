-- Memory of many requests waiting in the client's backoff: TASKS tasks
-- each make one RetryClient GET to a route that answers 503, so each
-- request waits WAIT seconds in backoff before its second (last) attempt.
-- The client keeps its default limit (100 attempts in flight), so the
-- first attempts finish long before the first wait ends and all TASKS
-- requests sit in backoff together. Once they do, this reads the
-- process's RSS (/proc/self/status); scripts/bench.sh also takes the peak
-- RSS of the whole run from /usr/bin/time.
-- With `floor`, each task makes one bare retry.request instead (at most
-- 100 at a time, as the client's limit) and then sleeps WAIT seconds: no
-- retry client, no retry state, the least a task that has made a request
-- holds while it waits (its coroutine's stack grew to make the request).
-- With `sleep`, each task only sleeps WAIT seconds and makes no request
-- (URL503 is not used): what TASKS waiting coroutines cost before any
-- request or retry state is added.
-- Usage: lretry scripts/bench_sleepers.lua URL503 [TASKS] [WAIT] [floor|sleep]
-- Prints: "bench_sleepers: N in backoff at once, RSS X KiB (peak Y KiB)"
local retry = require("retry")

local url = arg[1] or error("usage: lretry scripts/bench_sleepers.lua URL503 [TASKS] [WAIT] [floor|sleep]")
local n = math.tointeger(tonumber(arg[2] or 10000))
local wait = tonumber(arg[3] or 3)
local floor = arg[4] == "floor"
local sleep_only = arg[4] == "sleep"
assert(n and n > 0, "TASKS must be a positive integer")
assert(wait and wait > 0, "WAIT must be seconds > 0")
assert(arg[4] == nil or floor or sleep_only,
  "the fourth argument can only be floor or sleep")

local function status_kib(field)
  local f <close> = assert(io.open("/proc/self/status"))
  return tonumber(f:read("a"):match(field .. ":%s*(%d+) kB"))
end

-- The requests in backoff are counted at the server: nginx's stub_status
-- (at /nginx_status beside URL503, as scripts/bench.sh and the dev config
-- serve it) counts the requests it has read, so once it has read every
-- first attempt (and the polls), every request has had its 503 or is
-- about to, and waits. The strategy is the plain ListRetry a script would
-- write: one wrapped to count its calls would no longer be a strategy the
-- client can run in C (strategies.fixed_waits).
local status_url = url:gsub("^(https?://[^/]+).*$", "%1/nginx_status")
local polls = 0
local function served()
  polls = polls + 1
  local r <close> = retry.request("GET", status_url)
  local handled = r.status == 200 and tonumber(r:text():match("\n%s*%d+%s+%d+%s+(%d+)"))
  if not handled then
    error("bench_sleepers: no stub_status at " .. status_url .. " (status "
      .. r.status .. ")")
  end
  return handled - polls
end
local client <close> = retry.RetryClient{
  retry_options = retry.ListRetry{ timeouts = { wait }, attempts = 2 } }
local served_before = (not sleep_only and not floor) and served() or 0

local statuses, ended, asleep = 0, 0, 0
local tasks = {}
if sleep_only then
  for i = 1, n do
    tasks[i] = retry.spawn(function()
      asleep = asleep + 1
      retry.sleep(wait)
      ended = ended + 1
    end)
  end
elseif floor then
  -- As the client's limit: 100 requests at a time.
  local in_flight = 0
  for i = 1, n do
    while in_flight == 100 do retry.sleep(0.001) end
    in_flight = in_flight + 1
    tasks[i] = retry.spawn(function()
      -- The response is not kept through the wait, as the client's is
      -- not; an error is counted as not a 503 (the check at the end).
      local ok, r = pcall(retry.request, "GET", url)
      if ok then
        if r.status == 503 then statuses = statuses + 1 end
        r:close()
      end
      r = nil
      in_flight = in_flight - 1
      asleep = asleep + 1
      retry.sleep(wait)
      ended = ended + 1
    end)
  end
else
  for i = 1, n do
    tasks[i] = retry.spawn(function()
      local r <close> = client:get(url)
      if r.status == 503 and r.attempts == 2 then statuses = statuses + 1 end
      ended = ended + 1
    end)
  end
end
-- Wait until every request is in backoff (or the first waits end, or a
-- request ended without one), and read the RSS then: within 10 ms of the
-- last one entering it. The first entered after the poll before the one
-- that saw it.
local waiting, first, last = 0, nil, nil
local polled = retry.now()
while waiting < n and ended == 0 and (first == nil or retry.now() - first < wait) do
  retry.sleep(0.01)
  local now = retry.now()
  waiting = (floor or sleep_only) and asleep or served() - served_before
  if first == nil and waiting > 0 then first = polled end
  if waiting >= n and last == nil then last = now end
  polled = now
end
local rss, peak = status_kib("VmRSS"), status_kib("VmHWM")
local at_once = last ~= nil and retry.now() - first < wait
retry.gather(tasks)
print(("bench_sleepers: %d in backoff at once, RSS %d KiB (peak %d KiB)"):format(
  at_once and n or 0, rss, peak))
if not at_once or (statuses ~= n and not sleep_only) then
  io.stderr:write(("bench_sleepers: %d of %d entered backoff, %s; %d of %d "
    .. "got 503 (%s)\n"):format(waiting, n,
    at_once and "all at once" or "not all at once", statuses, n,
    sleep_only and "no request" or floor and "one request each"
      or "after 2 attempts"))
  os.exit(1)
end
