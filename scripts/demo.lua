-- Demo: requests to a flaky endpoint are retried until they succeed.
-- Usage: lretry scripts/demo.lua BASE_URL   (scripts/demo.sh starts a server)
local retry = require("retry")

local base = arg[1] or os.getenv("LRETRY_TEST_URL")
  or error("usage: lretry scripts/demo.lua BASE_URL")

-- /fail answers 503 to the first n hits of a key, then 200.
local function flaky(key, n)
  return base .. "/fail?n=" .. n .. "&status=503&key=" .. key .. "-" .. os.time()
end

local function get_with_retries(url, attempts)
  local wait = 0.1
  for attempt = 1, attempts do
    local t0 = retry.now()
    local r <close> = retry.request("GET", url)
    print(("  attempt %d: %d %s (%.1f ms)"):format(attempt, r.status, r.reason,
      (retry.now() - t0) * 1000))
    if r.status < 500 or attempt == attempts then return r.status, attempt end
    retry.sleep(wait)
    wait = wait * 2
  end
end

print("one flaky endpoint, failing twice:")
local status, attempts = get_with_retries(flaky("demo", 2), 5)
print(("=> %d after %d attempts"):format(status, attempts))

print("three flaky endpoints at once:")
local tasks = {}
for i = 1, 3 do
  tasks[i] = retry.spawn(get_with_retries, flaky("demo-" .. i, i), 5)
end
for i, s in ipairs(retry.gather(tasks)) do
  print(("=> endpoint %d: %d"):format(i, s))
end
