-- Throughput of the full retry client, or with `bare` of bare
-- `retry.request` (one attempt, no retry policy): CONCURRENCY tasks make
-- TOTAL GETs in all, through one shared RetryClient or not. Prints one line
-- with the figures.
-- Usage: lretry scripts/bench_client.lua URL [TOTAL] [CONCURRENCY] [bare]
local retry = require("retry")

local usage = "usage: lretry scripts/bench_client.lua URL [TOTAL] [CONCURRENCY] [bare]"
local url = arg[1] or error(usage)
local total = math.tointeger(tonumber(arg[2] or 100000))
local concurrency = math.tointeger(tonumber(arg[3] or 64))
assert(total and total > 0, "TOTAL must be a positive integer")
assert(concurrency and concurrency > 0, "CONCURRENCY must be a positive integer")
assert(arg[4] == nil or arg[4] == "bare", usage)

local bare = arg[4] == "bare"
local client <close> = not bare
  and retry.RetryClient{ retry_options = retry.ExponentialRetry{} } or nil
local function get()
  if bare then return retry.request("GET", url) end
  return client:get(url)
end
local started, ok, not_ok = 0, 0, 0

local function worker()
  while started < total do
    started = started + 1
    local r <close> = get()
    if r.status == 200 then ok = ok + 1 else not_ok = not_ok + 1 end
  end
end

local t0 = retry.now()
local tasks = {}
for i = 1, concurrency do tasks[i] = retry.spawn(worker) end
retry.gather(tasks)
local seconds = retry.now() - t0
print(("lretry: %d requests (%d not 200) in %.2f s, %.0f req/s"):format(
  ok + not_ok, not_ok, seconds, (ok + not_ok) / seconds))
if not_ok > 0 or ok ~= total then os.exit(1) end
