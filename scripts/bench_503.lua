-- Throughput of retrying: `lretry load` on a route that always answers 503,
-- ATTEMPTS attempts per request with no backoff wait (ListRetry of zeros),
-- so the figure is attempts per second, comparable with the requests per
-- second of `lretry load` on a 200 route. The CLI cannot set a zero wait
-- (--strategy list starts at 0.1 s), hence this script; the load is the
-- one the CLI builds: a client of its own with no limit, its request
-- prepared once (retry.client's prepare, internal: a measuring tool, not
-- an example) and a Lua check per response, as scripts/bench_load.lua's
-- 200 route has.
-- Usage: lretry scripts/bench_503.lua URL [REQUESTS] [CONCURRENCY] [ATTEMPTS]
-- Prints: "bench_503: R requests, A attempts in S s, X attempts/s"
local retry = require("retry")

local url = arg[1] or error("usage: lretry scripts/bench_503.lua URL [REQUESTS] [CONCURRENCY] [ATTEMPTS]")
local requests = math.tointeger(tonumber(arg[2] or 33334))
local concurrency = math.tointeger(tonumber(arg[3] or 64))
local attempts = math.tointeger(tonumber(arg[4] or 3))
assert(requests and requests > 0, "REQUESTS must be a positive integer")
assert(concurrency and concurrency > 0, "CONCURRENCY must be a positive integer")
assert(attempts and attempts > 0, "ATTEMPTS must be a positive integer")

local client <close> = retry.RetryClient{
  retry_options = retry.ListRetry{ timeouts = { 0 }, attempts = attempts },
  limit = 0,
}
local r = retry.load{
  client = client, concurrency = concurrency, requests = requests,
  request = require("retry.client").prepare(client, "GET", url),
  check = function(response) return response.status == 503 end,
  quiet = true,
}
print(("bench_503: %d requests, %d attempts in %.2f s, %.0f attempts/s"):format(
  r.requests, r.attempts_sent, r.duration, r.attempts_sent / r.duration))
-- Every request must have made all its attempts and ended in a 503.
if r.checks_failed ~= 0 or r.errors ~= 0 or r.attempts_sent ~= requests * attempts then
  io.stderr:write(r:summary())
  os.exit(1)
end
