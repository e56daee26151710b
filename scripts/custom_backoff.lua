-- Custom backoff in Lua: a strategy that honours Retry-After and otherwise
-- backs off linearly, and a response check that accepts a 200 only when its
-- JSON body says ok.
-- Usage: lretry scripts/custom_backoff.lua BASE_URL
local retry = require("retry")
local base = assert(arg[1], "usage: lretry scripts/custom_backoff.lua BASE_URL")

-- Any table built by RetryOptionsBase with a get_timeout function is a
-- strategy; it is stateless, so many requests can share it.
local polite = retry.RetryOptionsBase{
  attempts = 5,
  statuses = { 429 },
  get_timeout = function(self, attempt, response)
    local after = response and tonumber(response.headers["retry-after"])
    if after then return math.min(after, 2) end
    return 0.05 * attempt
  end,
  evaluate_response_callback = function(response)
    local ok, body = pcall(response.json, response)
    return ok and type(body) == "table" and body.ok == true
  end,
}

local client <close> = retry.RetryClient{
  retry_options = polite,
  logger = { debug = function(_, msg) print("  log: " .. msg) end,
             warning = print, exception = print },
}

local key = "backoff-" .. os.time()
print("429 with Retry-After: 0.2, twice, then 200:")
local r = client:get(base .. "/fail", { params = { n = 2, status = 429,
  retry_after = "0.2", key = key } })
print(("=> %d after %d attempts in %.2f s"):format(r.status, r.attempts, r.elapsed))

print("200 with a body that is not JSON, once, then a good body:")
r = client:get(base .. "/fail", { params = { n = 1, status = 200, bad_json = 1,
  key = key .. "-json" } })
print(("=> %d, body %s, after %d attempts"):format(r.status, r:text(), r.attempts))
