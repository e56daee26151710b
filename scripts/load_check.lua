-- Load check: a mixed workload against an API that fails now and then,
-- with real retry policies, a check on every response and thresholds that
-- make the run fail (exit 2) when crossed, as a CI job would use it.
-- Usage: lretry [--json FILE] scripts/load_check.lua BASE_URL [SECONDS]
-- Against the bundled server (scripts/server.sh), whose /flaky route drops
-- 5% of connections without a reply and answers 20% with a 503.
local retry = require("retry")

local base = arg[1]
if base == nil then
  io.stderr:write("usage: lretry scripts/load_check.lua BASE_URL [SECONDS]\n")
  os.exit(2)
end
local seconds = tonumber(arg[2] or "5")

local client <close> = retry.RetryClient{
  base_url = base,
  -- Full jitter keeps the retries of many clients from arriving together.
  retry_options = retry.ExponentialRetry{ attempts = 3, start_timeout = 0.01,
    jitter = "full" },
  timeout = 2,
  limit = 32,
}

local result = retry.load{
  label = "mixed: GET /hello, GET /flaky, POST /echo",
  client = client,
  concurrency = 32,
  duration = seconds,
  -- Six in ten requests read a page, three hit the flaky route, one posts.
  request = function(c, i)
    local pick = i % 10
    if pick < 6 then return c:get("/hello") end
    if pick < 9 then return c:get("/flaky?drop=5&fail=20") end
    return c:post("/echo", { json = { order = i } })
  end,
  check = function(response) return response.status == 200 end,
  thresholds = { p99 = 0.25, error_rate = 0.01, check_rate = 0.99 },
}

io.write(result:summary())
