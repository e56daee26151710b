-- Probe: check endpoints concurrently, retrying transient faults, and print
-- one line per endpoint. Exits 1 if any endpoint still fails.
-- Usage: lretry scripts/probe.lua URL [URL...]
local retry = require("retry")

if #arg == 0 then
  io.stderr:write("usage: lretry scripts/probe.lua URL [URL...]\n")
  os.exit(2)
end

local client <close> = retry.RetryClient{
  retry_options = retry.ExponentialRetry{ attempts = 4, start_timeout = 0.05 },
  timeout = 10,
  connect_timeout = 3,
}

local function probe(url)
  local ok, r = pcall(client.get, client, url)
  if not ok then
    return false, ("FAIL  %-60s %s"):format(url, tostring(r))
  end
  local line = ("%s  %-60s %d %s, %d attempt%s, %.0f ms"):format(
    r.ok and "OK  " or "FAIL", url, r.status, r.reason, r.attempts,
    r.attempts == 1 and "" or "s", r.elapsed * 1000)
  r:close()
  return r.ok, line
end

local tasks = {}
for i, url in ipairs(arg) do tasks[i] = retry.spawn(probe, url) end
local failed = 0
for _, t in ipairs(tasks) do
  local ok, line = t:await()
  print(line)
  if not ok then failed = failed + 1 end
end
print(("%d endpoint%s, %d failed"):format(#tasks, #tasks == 1 and "" or "s", failed))
os.exit(failed == 0 and 0 or 1)
