-- Throughput of a load with a Lua check: retry.load with a url and no
-- client (the load's own RetryClient, its request prepared once) and a
-- check function called on every response, closed model.
-- Usage: lretry scripts/bench_load.lua URL [REQUESTS] [CONCURRENCY]
-- Prints: "bench_load: N requests in S s, R req/s"
local retry = require("retry")

local url = arg[1] or error("usage: lretry scripts/bench_load.lua URL [REQUESTS] [CONCURRENCY]")
local requests = math.tointeger(tonumber(arg[2] or 100000))
local concurrency = math.tointeger(tonumber(arg[3] or 64))
assert(requests and requests > 0, "REQUESTS must be a positive integer")
assert(concurrency and concurrency > 0, "CONCURRENCY must be a positive integer")

local r = retry.load{
  url = url, concurrency = concurrency, requests = requests, quiet = true,
  check = function(response) return response.status == 200 end,
}
print(("bench_load: %d requests in %.2f s, %.0f req/s"):format(
  r.requests, r.duration, r.rps))
if r.checks_failed ~= 0 or r.errors ~= 0 or r.requests ~= requests then
  io.stderr:write(r:summary())
  os.exit(1)
end
