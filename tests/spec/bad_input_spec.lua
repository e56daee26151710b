-- Bad input everywhere (contract section 7, last point): thousands of calls
-- of every public function and method, and of every option, with values of
-- the wrong type, range or shape, or on the wrong object. Each call must
-- either work or raise an error object of the module: an `invalid` error
-- for bad arguments, never a plain string, a Lua runtime error or a
-- message with an internal file:line. No crash, no hang.
local retry = require("retry")
local h = require("helper")

local CALLS = 4000
local SEED = 20261130

-- Values a careless script might pass. Built inside a run (some need one).
local function value_pool()
  local response = retry.request("GET", h.url("/hello"))
  local done_task = retry.spawn(function() return 1 end)
  done_task:await()
  local pool = {
    false, true, 0, -1, 1, 2, 3, 1.5, -0.5, 2 ^ 53, 2 ^ 63, 1e300, math.huge,
    -math.huge, 0 / 0, math.mininteger, "", "x", "GET", "get", "POST", "GET X",
    "GET /admin HTTP/1.1\r\nX: y", "a\0b", "3", "transport", "network",
    string.rep("y", 300), h.url("/hello"), h.url("/status/404"),
    "http://127.0.0.1:1/", "ftp://x/", "/hello", {}, { 1, 2, 3 }, { "a" },
    { a = 1 }, { {} }, { h.url("/hello") }, { 0.001, 0.002 }, { "u", "p" },
    { [1] = 1, [3] = 3 }, { "GET", "POST" }, { 404, 500 },
    { ["X-Ok"] = "v" }, { ["Bad Name"] = "v" }, { X = "a\r\nb" },
    function() return true end, function() return false end, function() end,
    function() return 0.001 end, function() return -1 end,
    function() return 0.5 end,
    coroutine.create(function() end), io.stdout, response, done_task,
    retry.ExponentialRetry{ attempts = 1 }, retry.RetryClient(),
    retry.errors.new("network", "x"),
    setmetatable({}, { __call = function() return true end }),
  }
  return pool
end

local OPTION_KEYS = {
  client = { "retry_options", "raise_for_status", "logger", "base_url",
    "headers", "timeout", "connect_timeout", "trace_configs", "limit",
    "limit_per_host", "max_redirects", "max_body_size", "ca_file",
    "verify_tls", "deadline", "hedge", "budget", "breaker" },
  call = { "retry_options", "raise_for_status", "headers", "params", "data",
    "json", "auth", "timeout", "trace_request_ctx", "max_redirects",
    "max_body_size", "deadline", "hedge", "before_retry" },
  request = { "headers", "params", "data", "json", "auth", "timeout",
    "connect_timeout", "max_redirects", "max_body_size", "ca_file",
    "verify_tls" },
  budget = { "ratio", "min_per_second", "ttl" },
  breaker = { "failure_ratio", "min_requests", "window", "open_for" },
  strategy = { "attempts", "statuses", "exceptions", "methods",
    "retry_all_server_errors", "evaluate_response_callback", "start_timeout",
    "max_timeout", "factor", "min_timeout", "random_func", "timeouts",
    "multiplier", "random_interval_size", "get_timeout", "jitter", "base",
    "respect_retry_after", "max_retry_after", "retry_after_statuses",
    "before_retry" },
  params = { "method", "url", "headers", "trace_request_ctx", "kwargs" },
}

local STRATEGIES = { "RetryOptionsBase", "ExponentialRetry", "RandomRetry",
  "ListRetry", "FibonacciRetry", "JitterRetry", "DecorrelatedJitterRetry" }

local function fuzz(pool)
  local n = #pool + 1 -- index n + 1 stands for nil

  local function any()
    local i = math.random(n)
    return pool[i] -- nil when i == n
  end

  -- A table of options: a few known keys, sometimes an unknown one, with
  -- values from the pool.
  local function options(kind)
    local keys = OPTION_KEYS[kind]
    local t = {}
    for _ = 1, math.random(0, 3) do
      t[keys[math.random(#keys)]] = any()
    end
    if math.random() < 0.1 then t.no_such_option = any() end
    return t
  end

  local function arg_or_options(kind)
    if math.random() < 0.6 then return options(kind) end
    return any()
  end

  local function a_client()
    if math.random() < 0.5 then return retry.RetryClient() end
    local ok, c = pcall(retry.RetryClient, options("client"))
    return ok and c or retry.RetryClient()
  end

  local function a_strategy()
    local name = STRATEGIES[math.random(#STRATEGIES)]
    local ok, s = pcall(retry[name], options("strategy"))
    return ok and s or retry.ExponentialRetry{ attempts = 2, start_timeout = 0 }
  end

  local function a_url()
    if math.random() < 0.7 then return h.url("/hello") end
    return any()
  end

  local methods = { "get", "post", "put", "patch", "delete", "head", "options" }

  -- Each target makes one call of the public API with generated arguments.
  return {
    function() return retry.run(any(), any()) end,
    function() return retry.spawn(any(), any()) end,
    function() return retry.gather(any(), any()) end,
    function() return retry.gather({ any(), any() }) end,
    function() return retry.sleep(any()) end,
    function() return retry.now(any()) end,
    function() return retry.is_error(any(), any()) end,
    function() return retry.current_task(any()) end,
    function() return retry.request(any(), a_url(), arg_or_options("request")) end,
    function() return retry.request("GET", a_url(), arg_or_options("request")) end,
    function() return retry.RetryClient(arg_or_options("client")) end,
    function() return retry.RequestParams(arg_or_options("params")) end,
    function() return retry.errors.new(any(), any(), any()) end,
    function() return retry.RetryBudget(arg_or_options("budget")) end,
    function() return retry.CircuitBreaker(arg_or_options("breaker")) end,
    function()
      return retry[STRATEGIES[math.random(#STRATEGIES)]](arg_or_options("strategy"))
    end,
    function()
      local s = a_strategy()
      return s:get_timeout(any(), any())
    end,
    function() return a_strategy().get_timeout(any(), any()) end,
    function() return a_strategy().retries_status(any(), any()) end,
    function() return a_strategy().retries_method(any(), any()) end,
    function() return a_strategy().retries_error_kind(any(), any()) end,
    function()
      local c = a_client()
      local m = methods[math.random(#methods)]
      return c[m](c, a_url(), arg_or_options("call"))
    end,
    function()
      local c = a_client()
      return c[methods[math.random(#methods)]](any(), a_url())
    end,
    function()
      local c = a_client()
      return c:request(any(), a_url(), arg_or_options("call"))
    end,
    function()
      local c = a_client()
      return c:requests({ arg_or_options("params"), any() }, any())
    end,
    function() local c = a_client(); return c.close(any()) end,
    function()
      -- A live strategy field set to a bad value, caught by the next request.
      local c = retry.RetryClient{ retry_options = a_strategy() }
      local keys = OPTION_KEYS.strategy
      c.retry_options[keys[math.random(#keys)]] = any()
      return c:get(h.url("/hello"))
    end,
    function()
      -- A client field changed to a bad value, named by the next request.
      local c = a_client()
      local keys = OPTION_KEYS.client
      c[keys[math.random(#keys)]] = any()
      return c:get(h.url("/hello"))
    end,
    function()
      local t = retry.spawn(function() return 1 end)
      local op = ({ "await", "cancel" })[math.random(2)]
      if math.random() < 0.5 then return t[op](any()) end
      return t[op](t, any())
    end,
    function()
      local r = retry.request("GET", h.url("/hello"))
      local op = ({ "text", "read", "json", "raise_for_status", "close" })[
        math.random(5)]
      if math.random() < 0.5 then return r[op](any()) end
      return r[op](r, any())
    end,
    function()
      local r = retry.request("GET", h.url("/hello"))
      return r.headers[any()], r[any()]
    end,
  }
end

describe("every public function, given bad input", function()
  it("works or raises an error object, never a plain string or a runtime error", function()
    local failures, calls, cut, kinds = {}, 0, 0, {}
    retry.run(function()
      math.randomseed(SEED)
      local pool = value_pool()
      local targets = fuzz(pool)
      for i = 1, CALLS do
        local which = math.random(#targets)
        local call = retry.spawn(targets[which])
        -- A call may legitimately wait (a long sleep): cut it after a while
        -- and make sure the cancel ends it.
        local watchdog = retry.spawn(function()
          retry.sleep(0.3)
          cut = cut + 1
          call:cancel()
        end)
        local ok, err = pcall(call.await, call)
        watchdog:cancel()
        calls = calls + 1
        local outcome = ok and "ok" or (retry.is_error(err) and err.kind or "other")
        kinds[outcome] = (kinds[outcome] or 0) + 1
        if not ok then
          local good = retry.is_error(err) and type(err.message) == "string"
            and not err.message:find("%.lua:%d+:")
          if not good and #failures < 20 then
            failures[#failures + 1] = ("call %d (target %d): %s"):format(i,
              which, tostring(err))
          end
        end
      end
    end)
    local parts = {}
    for k, v in pairs(kinds) do parts[#parts + 1] = k .. " " .. v end
    table.sort(parts)
    print(("\n# %d calls, %d cut by the watchdog; outcomes: %s"):format(calls,
      cut, table.concat(parts, ", ")))
    assert.equal(CALLS, calls)
    assert.is_true(cut < CALLS / 20, "too many calls cut: " .. cut)
    assert.same({}, failures)
  end)
end)

describe("a NaN given where a number belongs", function()
  it("is named nan, whichever its sign bit", function()
    retry.run(function()
      for _, nan in ipairs({ 0 / 0, -(0 / 0) }) do
        local ok, e = pcall(retry.sleep, nan)
        assert.is_false(ok)
        assert.is_truthy(e.message:find("got nan$"), e.message)
        ok, e = pcall(retry.load, { url = h.url("/hello"), threads = nan })
        assert.is_false(ok)
        assert.is_truthy(e.message:find("got nan$"), e.message)
      end
    end)
  end)
end)
