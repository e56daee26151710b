-- Timer accuracy under full load: while a closed-model load of CONCURRENCY
-- workers runs against URL for SECONDS, SLEEPERS tasks each sleep again
-- and again for a random 1 to 20 ms, and every sleep's lateness is
-- recorded: (retry.now() after) - (before) - asked. retry.now() is
-- monotonic (uv_hrtime), so a negative lateness is a sleep that ended
-- early. The client's backoff waits use the same timers. Lateness goes
-- into a C histogram (1/256 relative error), not a Lua table: a table of
-- tens of thousands of numbers that grows all along is traversed whole by
-- every collection's atomic step, which made this bench's own sleeps late.
-- Usage: lretry scripts/bench_timers.lua URL [SECONDS] [CONCURRENCY] [SLEEPERS]
-- Prints: "bench_timers: N sleeps, lateness median X ms, p99 Y ms,
--          max Z ms, E early; load R req/s"
local retry = require("retry")

local url = arg[1] or error("usage: lretry scripts/bench_timers.lua URL [SECONDS] [CONCURRENCY] [SLEEPERS]")
local seconds = tonumber(arg[2] or 5)
local concurrency = math.tointeger(tonumber(arg[3] or 64))
local sleepers = math.tointeger(tonumber(arg[4] or 1000))
assert(seconds and seconds > 0, "SECONDS must be > 0")
assert(concurrency and concurrency > 0, "CONCURRENCY must be a positive integer")
assert(sleepers and sleepers > 0, "SLEEPERS must be a positive integer")

local late = require("retry.core").histogram()
local early, done = 0, false
local tasks = {}
for i = 1, sleepers do
  tasks[i] = retry.spawn(function()
    while not done do
      local x = (1 + 19 * math.random()) / 1000
      local t0 = retry.now()
      retry.sleep(x)
      local d = retry.now() - t0 - x
      if d < 0 then early = early + 1 end
      late:record(math.max(d, 0))
    end
  end)
end
local r = retry.load{
  url = url, concurrency = concurrency, duration = seconds, quiet = true,
  check = function(response) return response.status == 200 end,
}
done = true
retry.gather(tasks)

local function at(p) return late:percentile(p) * 1000 end
print(("bench_timers: %d sleeps, lateness median %.3f ms, p99 %.3f ms, "
  .. "max %.3f ms, %d early; load %.0f req/s"):format(late:count(), at(50),
  at(99), late:max() * 1000, early, r.rps))
if r.checks_failed ~= 0 or r.errors ~= 0 then
  io.stderr:write(r:summary())
  os.exit(1)
end
