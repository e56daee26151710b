-- Memory of a burst: N requests in flight at once (retry.load, closed
-- model, N workers, one request each) against a route that answers slowly
-- (nginx's /slow route in scripts/bench.sh), then what is left once the
-- burst is over: after 4 s idle (the loop lets go of idle easy handles and
-- connections after two 1 s periods without use, and gives the memory back
-- at the next) after a full Lua collection, this reads the
-- process's RSS (/proc/self/status). scripts/bench.sh takes the peak RSS
-- of the whole run from /usr/bin/time and compares it with the C ceiling's
-- for the same burst.
-- The figure means N in flight only if they all were at once: a task
-- samples the transfers in flight every 10 ms, and the run fails when the
-- most it saw is under N (the route answered before the last connected).
-- Usage: lretry scripts/bench_burst.lua URL [N]
-- Prints: "bench_burst: N requests in S s, M at once, peak RSS X KiB,
--          handles after H, after Y KiB"
local retry = require("retry")

local url = arg[1] or error("usage: lretry scripts/bench_burst.lua URL [N]")
local n = math.tointeger(tonumber(arg[2] or 10000))
assert(n and n > 0, "N must be a positive integer")

local function status_kib(field)
  local f <close> = assert(io.open("/proc/self/status"))
  return tonumber(f:read("a"):match(field .. ":%s*(%d+) kB"))
end

local core = require("retry.core")
local most, loading = 0, true
local sampler = retry.spawn(function()
  while loading do
    most = math.max(most, core.counts().transfers)
    retry.sleep(0.01)
  end
end)
local r = retry.load{
  url = url, concurrency = n, requests = n, quiet = true,
  check = function(response) return response.status == 200 end,
}
loading = false
sampler:await()
local peak = status_kib("VmHWM")
-- The load's tasks are garbage now: collected first, so what the loop
-- gives back to the system at its next tidy includes their memory.
collectgarbage("collect")
retry.sleep(4)
local after = status_kib("VmRSS")
-- libuv handles still open: a poll per connection and a timer per easy
-- handle the loop kept, beside its own few.
local handles = core.counts().handles
print(("bench_burst: %d requests in %.2f s, %d at once, peak RSS %d KiB, "
  .. "handles after %d, after %d KiB"):format(r.requests, r.duration, most,
  peak, handles, after))
if r.checks_failed ~= 0 or r.errors ~= 0 or r.requests ~= n then
  io.stderr:write(r:summary())
  os.exit(1)
end
if most < n then
  io.stderr:write(("bench_burst: at most %d of %d were in flight at once: "
    .. "the route answers too soon for this burst\n"):format(most, n))
  os.exit(1)
end
