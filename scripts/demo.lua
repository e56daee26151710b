-- Demo: a RetryClient retries a flaky endpoint until it succeeds, then runs
-- a hundred flaky requests at once.
-- Usage: lretry scripts/demo.lua BASE_URL   (scripts/demo.sh starts a server)
local retry = require("retry")

local base = arg[1] or os.getenv("LRETRY_TEST_URL")
  or error("usage: lretry scripts/demo.lua BASE_URL")
local run_id = os.time() .. "-" .. math.random(1e6)

local client <close> = retry.RetryClient{
  base_url = base,
  retry_options = retry.ExponentialRetry{ attempts = 5, start_timeout = 0.05 },
  trace_configs = { {
    on_request_end = function(_, ctx, params)
      local r = params.response
      print(("  attempt %d: %s %s -> %d %s"):format(
        ctx.trace_request_ctx.current_attempt, params.method, params.url,
        r.status, r.reason))
    end,
  } },
}

-- /fail answers 503 to the first n hits of a key, then 200.
print("A flaky endpoint that fails twice:")
local r <close> = client:get("/fail", { params = { n = 2, status = 503,
  key = "demo-" .. run_id } })
print(("=> %d %s after %d attempts, %.0f ms (waits: %.2f s, %.2f s)"):format(
  r.status, r.reason, r.attempts, r.elapsed * 1000, r.history[1].wait,
  r.history[2].wait))

print("100 requests at once, each failing 0-3 times first:")
client.trace_configs = {}
local t0 = retry.now()
local tasks = {}
for i = 1, 100 do
  tasks[i] = retry.spawn(function()
    local resp <close> = client:get("/fail", { params = { n = i % 4,
      status = 500, key = ("demo-%s-%d"):format(run_id, i) } })
    return resp.status == 200 and resp.attempts or -1
  end)
end
local histogram = {}
for _, attempts in ipairs(retry.gather(tasks)) do
  histogram[attempts] = (histogram[attempts] or 0) + 1
end
for attempts = 1, 4 do
  print(("  %3d succeeded after %d attempt%s"):format(histogram[attempts] or 0,
    attempts, attempts == 1 and "" or "s"))
end
assert(not histogram[-1], "some requests did not succeed")
print(("=> all 100 succeeded in %.0f ms"):format((retry.now() - t0) * 1000))
