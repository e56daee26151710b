-- Throughput of the full retry client; with `bare`, of bare
-- `retry.request` (one attempt, no retry policy); with `floor`, of the
-- core's own calls through http.send (start the transfer, wait, take the
-- Response) on one request table made up front: no retry layer, no
-- request table per call, no argument checks, the least any request of
-- lretry's design pays (it reaches into retry.http, which is internal: a
-- measuring tool, not an example). CONCURRENCY tasks make TOTAL GETs in
-- all. Prints one line with the figures.
-- Usage: lretry scripts/bench_client.lua URL [TOTAL] [CONCURRENCY] [bare|floor]
local retry = require("retry")
local http = require("retry.http")

local usage = "usage: lretry scripts/bench_client.lua URL [TOTAL] [CONCURRENCY] [bare|floor]"
local url = arg[1] or error(usage)
local total = math.tointeger(tonumber(arg[2] or 100000))
local concurrency = math.tointeger(tonumber(arg[3] or 64))
local mode = arg[4]
assert(total and total > 0, "TOTAL must be a positive integer")
assert(concurrency and concurrency > 0, "CONCURRENCY must be a positive integer")
assert(mode == nil or mode == "bare" or mode == "floor", usage)

local client <close> = mode == nil
  and retry.RetryClient{ retry_options = retry.ExponentialRetry{} } or nil
local spec = mode == "floor" and http.make_spec("GET", url, {}) or nil

-- One GET the floor's way: http.send, what retry.request does minus its
-- checks and request table.
local function send_spec()
  local r, err = http.send(spec)
  if r == nil then error(err, 0) end
  return r
end

local function get()
  if mode == "bare" then return retry.request("GET", url) end
  if mode == "floor" then return send_spec() end
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
