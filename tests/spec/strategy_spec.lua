-- Retry strategies (contract sections 3 and 8): pure timing math with an
-- injected RNG, field defaults, validation errors, statelessness and live
-- fields.
-- Needs no server and no C module.
local strategies = require("retry.strategies")
local errors = require("retry.errors")

local EPS = 1e-9

local CLASSES = {
  "RetryOptionsBase", "ExponentialRetry", "RandomRetry", "ListRetry",
  "FibonacciRetry", "JitterRetry", "DecorrelatedJitterRetry",
}

-- Build class `name` with `fields` (ListRetry gets a timeouts list added).
local function build(name, fields)
  fields = fields or {}
  if name == "ListRetry" and fields.timeouts == nil then
    fields.timeouts = { 1, 2, 3 }
  end
  return strategies[name](fields)
end

-- A random_func returning the given values in turn, then the last forever.
local function seq(...)
  local vals, i = { ... }, 0
  return function(...)
    assert(select("#", ...) == 0, "random_func called with arguments")
    i = i + 1
    return vals[math.min(i, #vals)]
  end
end

-- Call f, expect an `invalid` error whose message contains every string in
-- `needles` (plain find). Returns the error object.
local function invalid(f, ...)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  assert.is_true(errors.is_error(err, "invalid"),
    "expected an invalid error object, got " .. tostring(err))
  assert.equal("invalid", err.kind)
  for _, needle in ipairs({ ... }) do
    assert.is_truthy(err.message:find(needle, 1, true),
      ("message %q lacks %q"):format(err.message, needle))
  end
  return err
end

local function near(expected, actual)
  assert.is_true(math.abs(expected - actual) <= EPS,
    ("expected %.17g, got %.17g"):format(expected, actual))
end

describe("ExponentialRetry", function()
  it("waits min(start_timeout * factor^(n-1), max_timeout)", function()
    local o = strategies.ExponentialRetry()
    local want = { 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30 }
    for n, w in ipairs(want) do near(w, o:get_timeout(n)) end
    near(30, o:get_timeout(11))
    near(30, o:get_timeout(5000))           -- overflow to inf is capped
  end)

  it("uses given start_timeout, factor and max_timeout", function()
    local o = strategies.ExponentialRetry{
      start_timeout = 0.5, factor = 3, max_timeout = 10 }
    near(0.5, o:get_timeout(1))
    near(1.5, o:get_timeout(2))
    near(4.5, o:get_timeout(3))
    near(10, o:get_timeout(4))
  end)

  it("handles start_timeout 0 and factor 0 without NaN", function()
    local z = strategies.ExponentialRetry{ start_timeout = 0 }
    assert.equal(0, z:get_timeout(1))
    assert.equal(0, z:get_timeout(5000))
    local f0 = strategies.ExponentialRetry{ factor = 0 }
    near(0.1, f0:get_timeout(1))
    assert.equal(0, f0:get_timeout(2))
  end)

  it("has the documented defaults", function()
    local o = strategies.ExponentialRetry()
    assert.equal(0.1, o.start_timeout)
    assert.equal(30.0, o.max_timeout)
    assert.equal(2.0, o.factor)
  end)

  it("ignores the response and ctx arguments", function()
    local o = strategies.ExponentialRetry()
    near(0.4, o:get_timeout(3, { status = 503 }))
    near(0.4, o:get_timeout(3, nil, { previous_wait = 7 }))
  end)
end)

describe("ExponentialRetry jitter", function()
  local function exp(n) return math.min(0.1 * 2 ^ (n - 1), 30) end

  it("defaults to none, with math.random as random_func", function()
    local o = strategies.ExponentialRetry()
    assert.equal("none", o.jitter)
    assert.equal(math.random, o.random_func)
    local calls = 0
    local none = strategies.ExponentialRetry{ jitter = "none",
      random_func = function() calls = calls + 1; return 0.5 end }
    near(exp(3), none:get_timeout(3))
    assert.equal(0, calls)                       -- no jitter, no draw
  end)

  it("full waits random_func() * exp(n)", function()
    for _, r in ipairs({ 0, 0.5, 0.999 }) do
      local o = strategies.ExponentialRetry{ jitter = "full",
        random_func = seq(r) }
      for _, n in ipairs({ 1, 2, 3, 5, 10, 11, 5000 }) do
        near(r * exp(n), o:get_timeout(n))
      end
    end
  end)

  it("equal waits exp(n)/2 + random_func() * exp(n)/2", function()
    for _, r in ipairs({ 0, 0.5, 0.999 }) do
      local o = strategies.ExponentialRetry{ jitter = "equal",
        random_func = seq(r) }
      for _, n in ipairs({ 1, 2, 3, 5, 10, 11, 5000 }) do
        near(exp(n) / 2 + r * exp(n) / 2, o:get_timeout(n))
      end
    end
  end)

  it("uses the given start_timeout, factor and max_timeout", function()
    local o = strategies.ExponentialRetry{ jitter = "equal", start_timeout = 1,
      factor = 3, max_timeout = 20, random_func = seq(0.5) }
    near(0.75, o:get_timeout(1))                 -- 1/2 + 0.5 * 1/2
    near(6.75, o:get_timeout(3))                 -- 9/2 + 0.5 * 9/2
    near(15, o:get_timeout(4))                   -- capped at 20
    local z = strategies.ExponentialRetry{ jitter = "full", start_timeout = 0 }
    assert.equal(0, z:get_timeout(5000))
  end)

  it("stays within its range with math.random", function()
    local full = strategies.ExponentialRetry{ jitter = "full" }
    local equal = strategies.ExponentialRetry{ jitter = "equal" }
    for _ = 1, 100 do
      for n = 1, 10 do
        local f, e = full:get_timeout(n), equal:get_timeout(n)
        assert.is_true(f >= 0 and f < exp(n), "full " .. f)
        assert.is_true(e >= exp(n) / 2 and e < exp(n), "equal " .. e)
      end
    end
  end)

  it("names jitter and random_func when they are bad", function()
    for _, v in ipairs({ "Full", "", 1, true, {} }) do
      invalid(function() strategies.ExponentialRetry{ jitter = v } end,
        "ExponentialRetry", "'jitter'", '"none", "full" or "equal"')
    end
    invalid(function() strategies.ExponentialRetry{ random_func = 1 } end,
      "'random_func'")
    for _, bad in ipairs({ "x", 0 / 0, false }) do
      local o = strategies.ExponentialRetry{ jitter = "full",
        random_func = function() return bad end }
      invalid(function() o:get_timeout(1) end, "'random_func'")
    end
  end)

  it("shows a jitter other than none in tostring", function()
    assert.equal("retry.ExponentialRetry{attempts=3, start_timeout=0.1, "
      .. "max_timeout=30.0, factor=2.0, jitter=full}",
      tostring(strategies.ExponentialRetry{ jitter = "full" }))
  end)
end)

describe("DecorrelatedJitterRetry", function()
  it("has the documented defaults", function()
    local o = strategies.DecorrelatedJitterRetry()
    assert.equal(0.1, o.base)
    assert.equal(30.0, o.max_timeout)
    assert.equal(math.random, o.random_func)
    assert.equal(3, o.attempts)
    assert.equal("retry.DecorrelatedJitterRetry{attempts=3, base=0.1, "
      .. "max_timeout=30.0}", tostring(o))
  end)

  it("starts from base without a ctx or previous_wait", function()
    for _, r in ipairs({ 0, 0.5, 0.999 }) do
      local o = strategies.DecorrelatedJitterRetry{ base = 1,
        random_func = seq(r) }
      local want = 1 + r * (3 * 1 - 1)
      near(want, o:get_timeout(1))
      near(want, o:get_timeout(1, { status = 503 }, {}))
      near(want, o:get_timeout(4, nil, { previous_wait = nil }))
    end
  end)

  it("follows previous_wait from the ctx", function()
    -- The retry loop keeps ctx.previous_wait = the last wait returned.
    local o = strategies.DecorrelatedJitterRetry{ base = 1, max_timeout = 1000,
      random_func = seq(0.5) }
    local ctx, got = {}, {}
    for n = 1, 5 do
      got[n] = o:get_timeout(n, nil, ctx)
      ctx.previous_wait = got[n]
    end
    -- w(1) = 1 + 0.5 * (3 - 1) = 2; w(k) = 1 + 0.5 * (3 * w(k-1) - 1)
    local want = { 2, 3.5, 5.75, 9.125, 14.1875 }
    for n, w in ipairs(want) do near(w, got[n]) end
  end)

  it("computes each wait from the previous one and random_func", function()
    local o = strategies.DecorrelatedJitterRetry{ base = 0.5,
      max_timeout = 100, random_func = seq(0, 0.999, 0.25) }
    near(0.5, o:get_timeout(1, nil, { previous_wait = 4 }))        -- r = 0
    near(0.5 + 0.999 * 11.5, o:get_timeout(2, nil, { previous_wait = 4 }))
    near(0.5 + 0.25 * (30 - 0.5), o:get_timeout(3, nil, { previous_wait = 10 }))
  end)

  it("caps every wait at max_timeout", function()
    local o = strategies.DecorrelatedJitterRetry{ base = 1, max_timeout = 5,
      random_func = seq(0.999) }
    near(5, o:get_timeout(2, nil, { previous_wait = 4 }))    -- 1 + 0.999 * 11
    near(5, o:get_timeout(9, nil, { previous_wait = 5 }))
    near(1 + 0.999 * 2, o:get_timeout(1))                    -- under the cap
    local eq = strategies.DecorrelatedJitterRetry{ base = 2, max_timeout = 2,
      random_func = seq(0.7) }
    near(2, eq:get_timeout(3, nil, { previous_wait = 2 }))
    local uncapped = strategies.DecorrelatedJitterRetry{ base = 1,
      max_timeout = math.huge, random_func = seq(0.5) }
    near(1 + 0.5 * 299, uncapped:get_timeout(2, nil, { previous_wait = 100 }))
  end)

  it("stays within [base, min(max_timeout, 3 * previous)) with math.random",
    function()
      local o = strategies.DecorrelatedJitterRetry{ base = 0.1,
        max_timeout = 2 }
      local ctx = {}
      for n = 1, 200 do
        local prev = ctx.previous_wait or 0.1
        local t = o:get_timeout(n, nil, ctx)
        assert.is_true(t >= 0.1 - EPS and t <= math.min(2, 3 * prev) + EPS,
          ("n=%d: %.17g after %.17g"):format(n, t, prev))
        ctx.previous_wait = t
      end
    end)

  it("names bad fields, a bad previous_wait and a bad random_func result",
    function()
      for _, v in ipairs({ 0, -1, math.huge, 0 / 0, "1", true }) do
        invalid(function() strategies.DecorrelatedJitterRetry{ base = v } end,
          "DecorrelatedJitterRetry", "'base'", "a finite number > 0")
      end
      for _, v in ipairs({ -1, 0 / 0, "1", true }) do
        invalid(function()
          strategies.DecorrelatedJitterRetry{ max_timeout = v }
        end, "'max_timeout'")
      end
      invalid(function()
        strategies.DecorrelatedJitterRetry{ base = 5, max_timeout = 1 }
      end, "'base'", "'max_timeout'")
      invalid(function() strategies.DecorrelatedJitterRetry{ max_timeout = 0.05 }
      end, "'base'", "'max_timeout'")
      invalid(function()
        strategies.DecorrelatedJitterRetry{ random_func = "r" }
      end, "'random_func'")
      invalid(function()
        strategies.DecorrelatedJitterRetry{ jitter = "full" }
      end, "unknown field 'jitter'")
      local o = strategies.DecorrelatedJitterRetry{ random_func = seq(0.5) }
      for _, v in ipairs({ -1, 0 / 0, math.huge, "1" }) do
        invalid(function() o:get_timeout(2, nil, { previous_wait = v }) end,
          "previous_wait")
      end
      local r = strategies.DecorrelatedJitterRetry{
        random_func = function() return nil end }
      invalid(function() r:get_timeout(1) end, "'random_func'")
    end)
end)

describe("RandomRetry", function()
  it("waits min_timeout + random_func() * (max - min)", function()
    local o = strategies.RandomRetry{ random_func = seq(0, 0.5, 0.999) }
    near(0.1, o:get_timeout(1))
    near(0.1 + 0.5 * 2.9, o:get_timeout(2))
    near(0.1 + 0.999 * 2.9, o:get_timeout(3))
  end)

  it("names random_func when it returns a number out of [0, 1]", function()
    for _, bad in ipairs{ -1, 5, 0 / 0, "0.5" } do
      local o = strategies.RandomRetry{ random_func = function() return bad end }
      local ok, err = pcall(o.get_timeout, o, 1)
      assert.is_false(ok)
      assert.equal("invalid", err.kind)
      assert.matches("random_func' must return a number in %[0, 1%)",
        err.message)
    end
  end)

  it("uses given bounds", function()
    local o = strategies.RandomRetry{
      min_timeout = 1, max_timeout = 5, random_func = seq(0.25) }
    near(2, o:get_timeout(1))
    local eq = strategies.RandomRetry{ min_timeout = 2, max_timeout = 2 }
    near(2, eq:get_timeout(1))
  end)

  it("defaults to math.random and stays in [min, max)", function()
    local o = strategies.RandomRetry()
    assert.equal(0.1, o.min_timeout)
    assert.equal(3.0, o.max_timeout)
    assert.equal(math.random, o.random_func)
    for n = 1, 200 do
      local t = o:get_timeout(n)
      assert.is_true(t >= 0.1 and t < 3.0, "out of range: " .. t)
    end
  end)

  it("names random_func when it returns a non-number", function()
    local o = strategies.RandomRetry{ random_func = function() return "x" end }
    invalid(function() o:get_timeout(1) end, "random_func")
  end)
end)

describe("ListRetry", function()
  it("waits timeouts[n], then the last one", function()
    local o = strategies.ListRetry{ timeouts = { 0.1, 0.2, 0.5 } }
    assert.equal(0.1, o:get_timeout(1))
    assert.equal(0.2, o:get_timeout(2))
    assert.equal(0.5, o:get_timeout(3))
    assert.equal(0.5, o:get_timeout(4))
    assert.equal(0.5, o:get_timeout(100))
  end)

  it("accepts a plain list as the timeouts", function()
    local o = strategies.ListRetry({ 0.1, 0.2 })
    assert.same({ 0.1, 0.2 }, o.timeouts)
    assert.equal(2, o.attempts)
    assert.equal(0.2, o:get_timeout(3))
    local mixed = strategies.ListRetry({ 1, 2, 3, attempts = 5 })
    assert.same({ 1, 2, 3 }, mixed.timeouts)
    assert.equal(5, mixed.attempts)
  end)

  it("defaults attempts to #timeouts, keeps an explicit one", function()
    assert.equal(3, strategies.ListRetry{ timeouts = { 1, 2, 3 } }.attempts)
    assert.equal(1, strategies.ListRetry{ timeouts = { 7 } }.attempts)
    local o = strategies.ListRetry{ timeouts = { 1, 2, 3 }, attempts = 10 }
    assert.equal(10, o.attempts)
    assert.equal(3, o:get_timeout(10))
  end)

  it("copies the timeouts list", function()
    local t = { 1, 2 }
    local o = strategies.ListRetry{ timeouts = t }
    t[1] = 99
    assert.equal(1, o:get_timeout(1))
  end)

  it("requires non-empty numeric timeouts, naming the field", function()
    invalid(function() strategies.ListRetry() end, "ListRetry", "'timeouts'")
    invalid(function() strategies.ListRetry{} end, "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = {} } end, "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = { 1, "2" } } end,
      "'timeouts'", "index 2")
    invalid(function() strategies.ListRetry{ timeouts = { 1, -2 } } end,
      "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = { 1, 0 / 0 } } end,
      "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = 5 } end, "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = { 1, nil, 3 } } end,
      "'timeouts'")
    invalid(function() strategies.ListRetry{ timeouts = { a = 1 } } end,
      "'timeouts'")
    invalid(function() strategies.ListRetry({ 1, timeouts = { 2 } }) end,
      "'timeouts'")
  end)

  it("names timeouts when a later assignment empties it", function()
    -- Named by check_live, which the retry loop runs before each request.
    local o = strategies.ListRetry{ 1 }
    o.timeouts = {}
    invalid(function() strategies.check_live(o, "retry_options") end,
      "retry_options", "'timeouts'")
    o.timeouts = nil
    invalid(function() strategies.check_live(o, "retry_options") end,
      "'timeouts'")
  end)
end)

describe("FibonacciRetry", function()
  it("waits min(multiplier * F(n), 3.0) by default", function()
    local o = strategies.FibonacciRetry()
    assert.equal(1.0, o.multiplier)
    assert.equal(3.0, o.max_timeout)
    assert.equal(2, o:get_timeout(1))
    assert.equal(3, o:get_timeout(2))
    assert.equal(3, o:get_timeout(3))
    assert.equal(3, o:get_timeout(50))
  end)

  it("follows F = 2, 3, 5, 8, 13, ... with multiplier 2, max 60", function()
    local o = strategies.FibonacciRetry{ multiplier = 2, max_timeout = 60 }
    local want = { 4, 6, 10, 16, 26, 42, 60, 60 }
    for n, w in ipairs(want) do assert.equal(w, o:get_timeout(n)) end
  end)

  it("is uncapped with max_timeout = math.huge", function()
    local o = strategies.FibonacciRetry{ max_timeout = math.huge }
    local want = { 2, 3, 5, 8, 13, 21, 34, 55, 89, 144 }
    for n, w in ipairs(want) do assert.equal(w, o:get_timeout(n)) end
  end)

  it("gives 0 with multiplier 0", function()
    assert.equal(0, strategies.FibonacciRetry{ multiplier = 0 }:get_timeout(4))
  end)
end)

describe("JitterRetry", function()
  local function exp(n) return math.min(0.1 * 2 ^ (n - 1), 30) end

  it("adds uniform(0, size)^factor to the exponential wait", function()
    local o = strategies.JitterRetry{ random_func = seq(0, 0.5, 0.75, 0.999) }
    near(exp(1), o:get_timeout(1))                 -- u = 0
    near(exp(2) + 1.0, o:get_timeout(2))           -- u = 1.0, 1^2
    near(exp(3) + 2.25, o:get_timeout(3))          -- u = 1.5, 1.5^2
    near(exp(10) + 1.998 ^ 2, o:get_timeout(10))   -- capped base + jitter
  end)

  it("uses given size and factor", function()
    local o = strategies.JitterRetry{ random_interval_size = 4, factor = 3,
      start_timeout = 1, max_timeout = 100, random_func = seq(0.5) }
    near(1 + 8, o:get_timeout(1))      -- 1*3^0 + (0.5*4)^3
    near(9 + 8, o:get_timeout(3))      -- 1*3^2 + 8
  end)

  it("stays within [exp(n), exp(n) + size^factor] with math.random", function()
    local o = strategies.JitterRetry()
    assert.equal(math.random, o.random_func)
    for _ = 1, 100 do
      for n = 1, 10 do
        local t = o:get_timeout(n)
        assert.is_true(t >= exp(n) - EPS and t <= exp(n) + 4 + EPS,
          ("n=%d: %.17g"):format(n, t))
      end
    end
  end)

  it("has the documented defaults", function()
    local o = strategies.JitterRetry()
    assert.equal(0.1, o.start_timeout)
    assert.equal(30.0, o.max_timeout)
    assert.equal(2.0, o.factor)
    assert.equal(2.0, o.random_interval_size)
  end)
end)

describe("RetryOptionsBase", function()
  it("uses a get_timeout field as the method", function()
    local seen
    local o = strategies.RetryOptionsBase{ attempts = 4,
      get_timeout = function(self, attempt, response)
        seen = { self, attempt, response }
        return attempt * 10
      end }
    local resp = { status = 503 }
    assert.equal(20, o:get_timeout(2, resp))
    assert.equal(o, seen[1])
    assert.equal(2, seen[2])
    assert.equal(resp, seen[3])
    assert.equal(4, o.attempts)
  end)

  it("raises a clear error without get_timeout", function()
    local o = strategies.RetryOptionsBase()
    invalid(function() o:get_timeout(1) end, "get_timeout")
    o.get_timeout = function() return 7 end      -- may be supplied later
    assert.equal(7, o:get_timeout(1))
  end)

  it("rejects a non-function get_timeout", function()
    invalid(function() strategies.RetryOptionsBase{ get_timeout = 5 } end,
      "'get_timeout'")
  end)

  it("accepts get_timeout on no other class", function()
    for _, name in ipairs(CLASSES) do
      if name ~= "RetryOptionsBase" then
        invalid(function()
          build(name, { get_timeout = function() return 1 end })
        end, name, "unknown field 'get_timeout'")
      end
    end
  end)
end)

describe("shared fields", function()
  it("have the same defaults on every class", function()
    for _, name in ipairs(CLASSES) do
      local o = name == "ListRetry" and build(name, { attempts = 3 })
        or strategies[name]()
      assert.equal(3, o.attempts)
      assert.equal("integer", math.type(o.attempts))
      assert.same({}, o.statuses)
      assert.same({ "connect", "dns", "timeout", "network" }, o.exceptions)
      assert.same({ "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
        "OPTIONS", "TRACE", "CONNECT" }, o.methods)
      assert.is_true(o.retry_all_server_errors)
      assert.is_nil(o.evaluate_response_callback)
      assert.is_true(o.respect_retry_after)
      assert.equal(120, o.max_retry_after)
      assert.same({ 429, 503 }, o.retry_after_statuses)
      assert.is_nil(o.before_retry)
    end
  end)

  it("are stored as given", function()
    local cb = function() return true end
    local before = function() end
    local o = strategies.ExponentialRetry{ attempts = 7, statuses = { 429, 404 },
      exceptions = { "timeout", "tls" }, methods = { "get", "Post" },
      retry_all_server_errors = false, evaluate_response_callback = cb,
      respect_retry_after = false, max_retry_after = 5,
      retry_after_statuses = { 503.0 }, before_retry = before }
    assert.equal(7, o.attempts)
    assert.same({ 429, 404 }, o.statuses)
    assert.same({ "timeout", "tls" }, o.exceptions)
    assert.same({ "GET", "POST" }, o.methods)
    assert.is_false(o.retry_all_server_errors)
    assert.equal(cb, o.evaluate_response_callback)
    assert.is_false(o.respect_retry_after)
    assert.equal(5, o.max_retry_after)
    assert.same({ 503 }, o.retry_after_statuses)
    assert.equal("integer", math.type(o.retry_after_statuses[1]))
    assert.equal(before, o.before_retry)
  end)

  it("accept math.huge and 0 for max_retry_after", function()
    assert.equal(math.huge,
      strategies.RandomRetry{ max_retry_after = math.huge }.max_retry_after)
    assert.equal(0, strategies.ListRetry{ 1, max_retry_after = 0 }
      .max_retry_after)
    assert.same({}, strategies.FibonacciRetry{ retry_after_statuses = {} }
      .retry_after_statuses)
  end)

  it("accept an integral float for attempts and store an integer", function()
    local o = strategies.ExponentialRetry{ attempts = 4.0 }
    assert.equal(4, o.attempts)
    assert.equal("integer", math.type(o.attempts))
  end)

  it("get fresh default tables per object", function()
    local a, b = strategies.ExponentialRetry(), strategies.ExponentialRetry()
    a.statuses[1] = 429
    a.methods[1] = "X"
    a.retry_after_statuses[1] = 500
    a.exceptions[1] = "tls"
    assert.same({}, b.statuses)
    assert.equal("GET", b.methods[1])
    assert.same({ 429, 503 }, b.retry_after_statuses)
    assert.equal("connect", b.exceptions[1])
    assert.same({ 429, 503 }, strategies.ExponentialRetry().retry_after_statuses)
  end)

  it("copy the lists they are given", function()
    local list = { 429 }
    local o = strategies.ExponentialRetry{ statuses = list,
      retry_after_statuses = list }
    list[1] = 500
    assert.same({ 429 }, o.statuses)
    assert.same({ 429 }, o.retry_after_statuses)
  end)
end)

describe("validation", function()
  it("names the field for every bad shared value, on every class", function()
    local bad = {
      { "attempts", -1, "got -1" }, { "attempts", 0 }, { "attempts", 1.5 },
      { "attempts", "3" }, { "statuses", 500 }, { "statuses", { 99 } },
      { "statuses", { 600 } }, { "statuses", { "503" } },
      { "statuses", { 500.5 } }, { "exceptions", "transport" },
      { "exceptions", { "bogus" } }, { "exceptions", { 1 } },
      { "methods", "GET" }, { "methods", { "" } }, { "methods", { 1 } },
      { "retry_all_server_errors", 1 }, { "retry_all_server_errors", "yes" },
      { "evaluate_response_callback", true },
      { "evaluate_response_callback", "f" },
      { "respect_retry_after", 1, "must be a boolean, got 1" },
      { "respect_retry_after", "true" }, { "respect_retry_after", {} },
      { "max_retry_after", -1, "must be a number >= 0, got -1" },
      { "max_retry_after", 0 / 0 }, { "max_retry_after", "120" },
      { "max_retry_after", true }, { "max_retry_after", -math.huge },
      { "retry_after_statuses", 429 }, { "retry_after_statuses", "429" },
      { "retry_after_statuses", { 99 }, "got 99 at index 1" },
      { "retry_after_statuses", { 429, 600 }, "got 600 at index 2" },
      { "retry_after_statuses", { "429" } },
      { "retry_after_statuses", { 429.5 } },
      { "retry_after_statuses", { 429, nil, 503 } },
      { "retry_after_statuses", { a = 429 } },
      { "before_retry", true, "must be a function or nil, got true" },
      { "before_retry", "f" }, { "before_retry", 0 }, { "before_retry", {} },
    }
    for _, name in ipairs(CLASSES) do
      for _, case in ipairs(bad) do
        local field, value, extra = case[1], case[2], case[3]
        local err = invalid(function() build(name, { [field] = value }) end,
          name, "'" .. field .. "'")
        if extra then assert.matches(extra, err.message, 1, true) end
      end
    end
  end)

  it("gives the exact message for bad attempts", function()
    local err = invalid(function()
      strategies.ExponentialRetry{ attempts = -1 }
    end)
    assert.equal(
      "ExponentialRetry: field 'attempts' must be an integer >= 1, got -1",
      err.message)
  end)

  it("names an unknown field (typos)", function()
    for _, name in ipairs(CLASSES) do
      local err = invalid(function() build(name, { atempts = 3 }) end)
      assert.equal(name .. ": unknown field 'atempts'", err.message)
    end
    invalid(function() strategies.ExponentialRetry{ min_timeout = 1 } end,
      "unknown field 'min_timeout'")
    invalid(function() strategies.RandomRetry{ factor = 1 } end,
      "unknown field 'factor'")
    invalid(function() strategies.ExponentialRetry({ 5 }) end, "unknown field")
  end)

  it("rejects a non-table argument", function()
    invalid(function() strategies.ExponentialRetry(5) end,
      "ExponentialRetry", "table")
  end)

  it("names bad numeric fields", function()
    local cases = {
      ExponentialRetry = { "start_timeout", "max_timeout", "factor" },
      JitterRetry = { "start_timeout", "max_timeout", "factor",
        "random_interval_size" },
      RandomRetry = { "min_timeout", "max_timeout" },
      FibonacciRetry = { "multiplier", "max_timeout" },
      DecorrelatedJitterRetry = { "base", "max_timeout" },
    }
    for name, fields in pairs(cases) do
      for _, f in ipairs(fields) do
        for _, v in ipairs({ -0.5, "1", 0 / 0, true }) do
          invalid(function() strategies[name]{ [f] = v } end,
            name, "'" .. f .. "'")
        end
      end
    end
  end)

  it("names random_func when it is not a function", function()
    for _, name in ipairs({ "RandomRetry", "JitterRetry", "ExponentialRetry",
      "DecorrelatedJitterRetry" }) do
      invalid(function() strategies[name]{ random_func = 0.5 } end,
        "'random_func'")
    end
    -- a callable table is fine
    local callable = setmetatable({}, { __call = function() return 0.5 end })
    near(0.1 + 0.5 * 2.9,
      strategies.RandomRetry{ random_func = callable }:get_timeout(1))
  end)

  it("rejects min_timeout > max_timeout", function()
    invalid(function()
      strategies.RandomRetry{ min_timeout = 5, max_timeout = 1 }
    end, "'min_timeout'", "'max_timeout'")
    invalid(function() strategies.RandomRetry{ min_timeout = 4 } end,
      "'min_timeout'")
  end)

  it("allows start_timeout above max_timeout (capped)", function()
    local o = strategies.ExponentialRetry{ start_timeout = 5, max_timeout = 1 }
    assert.equal(1, o:get_timeout(1))
  end)

  it("names a bad attempt argument to get_timeout", function()
    for _, name in ipairs(CLASSES) do
      if name ~= "RetryOptionsBase" then
        local o = build(name)
        invalid(function() o:get_timeout(0) end, "'attempt'")
        invalid(function() o:get_timeout(1.5) end, "'attempt'")
        invalid(function() o:get_timeout("1") end, "'attempt'")
        invalid(function() o.get_timeout(3) end, name, "self")
        invalid(function() o.get_timeout({ attempts = 3 }, 1) end, "self")
      end
    end
  end)
end)

describe("statelessness", function()
  local function make_all()
    return {
      strategies.ExponentialRetry(),
      strategies.FibonacciRetry{ multiplier = 2, max_timeout = 60 },
      strategies.ListRetry{ 0.1, 0.2, 0.3 },
      strategies.JitterRetry{ random_func = seq(0.5) },
      strategies.RandomRetry{ random_func = seq(0.5) },
      strategies.ExponentialRetry{ jitter = "equal", random_func = seq(0.5) },
      strategies.DecorrelatedJitterRetry{ random_func = seq(0.5) },
    }
  end

  it("gives the same wait out of order and when repeated", function()
    for _, o in ipairs(make_all()) do
      local forward = {}
      for n = 1, 8 do forward[n] = o:get_timeout(n) end
      for _, n in ipairs({ 5, 1, 8, 3, 3, 2, 7, 1, 4, 6 }) do
        assert.equal(forward[n], o:get_timeout(n), tostring(o) .. " n=" .. n)
      end
    end
  end)

  it("gives interleaved sequences the waits each would get alone", function()
    local alone = {}
    for i, o in ipairs(make_all()) do
      alone[i] = {}
      for n = 1, 6 do alone[i][n] = o:get_timeout(n) end
    end
    for i, o in ipairs(make_all()) do
      local a, b = {}, {}
      for n = 1, 6 do
        a[n] = o:get_timeout(n)
        b[n] = o:get_timeout(n)
      end
      assert.same(alone[i], a)
      assert.same(alone[i], b)
    end
    local fib = strategies.FibonacciRetry{ multiplier = 2, max_timeout = 60 }
    local a1, b1, a2, b2 = fib:get_timeout(1), fib:get_timeout(1),
      fib:get_timeout(2), fib:get_timeout(2)
    assert.same({ 4, 4, 6, 6 }, { a1, b1, a2, b2 })
  end)
end)

describe("live fields", function()
  it("affect get_timeout after construction", function()
    local o = strategies.ExponentialRetry()
    near(0.2, o:get_timeout(2))
    o.start_timeout = 1
    near(2, o:get_timeout(2))
    o.factor = 3
    near(9, o:get_timeout(3))
    o.max_timeout = 5
    near(5, o:get_timeout(3))

    local f = strategies.FibonacciRetry()
    f.max_timeout = 100
    assert.equal(13, f:get_timeout(5))
    f.multiplier = 0.5
    near(6.5, f:get_timeout(5))

    local l = strategies.ListRetry{ 1, 2 }
    l.timeouts = { 5, 6, 7 }
    assert.equal(7, l:get_timeout(9))

    local r = strategies.RandomRetry{ random_func = seq(0.5) }
    r.max_timeout = 10.1
    near(5.1, r:get_timeout(1))
    r.random_func = seq(0)
    near(0.1, r:get_timeout(1))

    local j = strategies.JitterRetry{ random_func = seq(1 / 2) }
    j.random_interval_size = 6
    near(0.1 + 9, j:get_timeout(1))
  end)

  it("are plain fields the decision helpers read at call time", function()
    local o = strategies.ExponentialRetry()
    o.attempts = 2
    assert.equal(2, o.attempts)
    assert.is_false(o:retries_status(404))
    o.statuses = { 404 }
    assert.is_true(o:retries_status(404))
    o.methods = { "get" }
    assert.is_true(o:retries_method("GET"))
    assert.is_false(o:retries_method("POST"))
    o.exceptions = {}
    assert.is_false(o:retries_error_kind("timeout"))
  end)

  it("read, iterate and print like plain tables, each with its own lists",
    function()
    local a = strategies.ExponentialRetry{ statuses = { 429, 404 } }
    local b = strategies.ExponentialRetry()
    local fields = {}
    for k, v in pairs(a) do fields[k] = v end
    assert.equal(3, fields.attempts)
    assert.equal(a.statuses, fields.statuses)
    assert.equal("none", fields.jitter)
    assert.equal(2, #a.statuses)
    assert.same({ 429, 404 }, { table.unpack(a.statuses) })
    assert.equal("429,404", table.concat(a.statuses, ","))
    local seen = {}
    for i, s in ipairs(a.statuses) do seen[i] = s end
    assert.same({ 429, 404 }, seen)
    local keys = {}
    for k in pairs(a.methods) do keys[#keys + 1] = k end
    assert.equal(9, #keys)
    assert.matches("timeouts={1, 2.5}",
      tostring(strategies.ListRetry{ 1, 2.5 }), 1, true)
    a.methods[1] = "X"
    assert.equal("GET", b.methods[1])
  end)

  it("are plain tables: raw access, JSON and copies with their metatable",
    function()
    local o = strategies.ExponentialRetry{ attempts = 5, statuses = { 404 } }
    assert.equal(5, rawget(o, "attempts"))
    assert.equal("[404]", require("cjson").encode(o.statuses))
    local copy = {}
    for k, v in pairs(o) do copy[k] = v end
    setmetatable(copy, getmetatable(o))
    copy.attempts = 2
    assert.equal(5, o.attempts)
    assert.matches("attempts=2", tostring(copy), 1, true)
    near(0.2, copy:get_timeout(2))
    strategies.check_live(copy, "retry_options")
    assert.is_true(strategies.is_options(copy))
    assert.equal(getmetatable(o), getmetatable(strategies.ExponentialRetry()))
  end)

  -- get_timeout trusts the fields it reads, checked at construction; a
  -- later assignment is named by check_live, which the retry loop runs
  -- before each request.
  it("names a numeric field broken by a later assignment", function()
    local o = strategies.ExponentialRetry()
    o.start_timeout = "fast"
    invalid(function() strategies.check_live(o, "retry_options") end,
      "retry_options: field 'start_timeout' must be a finite number >= 0")
  end)
end)

describe("check_live", function()
  local function live(o) return strategies.check_live(o, "retry_options") end

  it("passes every freshly built object, and after good changes", function()
    for _, name in ipairs(CLASSES) do live(build(name)) end
    local o = strategies.ExponentialRetry()
    o.attempts, o.statuses, o.methods = 2, { 404 }, { "post" }
    o.jitter, o.max_retry_after, o.before_retry = "equal", 1, print
    live(o)
    live({ attempts = 2, get_timeout = function() return 0 end })
  end)

  it("names every bad field of a built object", function()
    local cases = {
      ExponentialRetry = { start_timeout = -1, max_timeout = "x",
        factor = 0 / 0, jitter = "half", random_func = 5 },
      RandomRetry = { min_timeout = math.huge, max_timeout = "3",
        random_func = {} },
      ListRetry = { timeouts = { 1, -1 } },
      FibonacciRetry = { multiplier = -2, max_timeout = false },
      JitterRetry = { factor = math.huge, random_interval_size = -1 },
      DecorrelatedJitterRetry = { base = 0, max_timeout = -1,
        random_func = "x" },
      RetryOptionsBase = { attempts = 0 },
    }
    local shared = { attempts = "x", statuses = 5, exceptions = { "bogus" },
      methods = { 1 }, retry_all_server_errors = "yes",
      evaluate_response_callback = 1, respect_retry_after = "no",
      max_retry_after = -5, retry_after_statuses = { 700 },
      before_retry = true }
    for name, fields in pairs(cases) do
      for field, bad in pairs(fields) do
        local o = build(name)
        o[field] = bad
        invalid(function() live(o) end, "retry_options", "'" .. field .. "'")
      end
      for field, bad in pairs(shared) do
        local o = build(name)
        o[field] = bad
        invalid(function() live(o) end, "'" .. field .. "'")
      end
    end
  end)

  it("names a field with a default set to nil on a built object", function()
    for _, field in ipairs({ "attempts", "statuses", "respect_retry_after",
      "max_retry_after", "retry_after_statuses", "start_timeout",
      "random_func" }) do
      local o = strategies.ExponentialRetry()
      o[field] = nil
      invalid(function() live(o) end, "'" .. field .. "'", "got nil")
    end
    local o = strategies.ExponentialRetry{ before_retry = print }
    o.before_retry, o.evaluate_response_callback = nil, nil
    live(o)                                     -- optional fields
  end)

  it("re-checks the order of two fields", function()
    local r = strategies.RandomRetry()
    r.min_timeout = 5
    invalid(function() live(r) end, "'min_timeout'", "'max_timeout'")
    local d = strategies.DecorrelatedJitterRetry()
    d.max_timeout = 0.01
    invalid(function() live(d) end, "'base'", "'max_timeout'")
  end)

  it("after passing once, still names every later change", function()
    -- check_live runs its checks again only when something changed since
    -- they last passed: every kind of change must count as one.
    local changes = {
      { function(o) o.attempts = 0 end, "'attempts'" },
      { function(o) o.statuses[1] = "x" end, "'statuses'" },
      { function(o) o.statuses[#o.statuses + 1] = 700 end, "'statuses'" },
      { function(o) o.statuses.extra = 1 end, "'statuses'" },
      { function(o) o.statuses[3] = 500 end, "'statuses'" }, -- a hole
      { function(o) o.methods[9] = 1 end, "'methods'" },
      { function(o) o.exceptions[1] = "bogus" end, "'exceptions'" },
      { function(o) o.retry_after_statuses[2] = 99 end,
        "'retry_after_statuses'" },
      { function(o) o.get_timeout = 5 end, "get_timeout" },
      { function(o) o.start_timeout = -1 end, "'start_timeout'" },
      -- Past any metamethod.
      { function(o) rawset(o, "attempts", 0) end, "'attempts'" },
      -- A list of another object's, edited through that object.
      { function(o)
        local other = strategies.ExponentialRetry()
        o.statuses = other.statuses
        live(o)
        other.statuses[1] = 700
      end, "'statuses'" },
      -- A script's own list, edited after it was set.
      { function(o)
        local mine = { 429 }
        o.statuses = mine
        live(o)
        mine[#mine + 1] = "x"
      end, "'statuses'" },
      { function(o) table.insert(o.methods, 1, false) end, "'methods'" },
      { function(o) rawset(o.statuses, 1, "x") end, "'statuses'" },
      -- A list another object holds, not empty, edited there.
      { function(o)
        local other = strategies.ExponentialRetry{ statuses = { 404 } }
        o.statuses = other.statuses
        live(o)
        live(o)
        other.statuses[2] = 700
      end, "'statuses'" },
    }
    for _, c in ipairs(changes) do
      local o = strategies.ExponentialRetry{ statuses = { 429 } }
      live(o)
      live(o) -- passes again, unchanged
      c[1](o)
      invalid(function() live(o) end, c[2])
    end
    local r = strategies.RandomRetry()
    live(r)
    r.min_timeout = 5
    invalid(function() live(r) end, "'min_timeout'", "'max_timeout'")
    -- A change back to good values passes again.
    local o = strategies.ExponentialRetry()
    live(o)
    o.attempts = 0
    invalid(function() live(o) end, "'attempts'")
    o.attempts = 4
    live(o)
  end)

  it("checks a duck-typed table's shared fields where present", function()
    local g = function() return 0 end
    live({ attempts = 1, get_timeout = g, statuses = { 429 } })
    invalid(function()
      live({ attempts = 1, get_timeout = g, max_retry_after = "x" })
    end, "'max_retry_after'")
    invalid(function()
      live({ attempts = 1, get_timeout = g, before_retry = 5 })
    end, "'before_retry'")
    invalid(function() live({ attempts = 1, get_timeout = 5 }) end,
      "get_timeout")
  end)
end)

describe("retries_status", function()
  it("retries >= 500 when retry_all_server_errors, and listed statuses",
    function()
      local o = strategies.ExponentialRetry{ statuses = { 429 } }
      assert.is_true(o:retries_status(500))
      assert.is_true(o:retries_status(503))
      assert.is_true(o:retries_status(429))
      assert.is_false(o:retries_status(404))
      assert.is_false(o:retries_status(200))
      o.retry_all_server_errors = false
      assert.is_false(o:retries_status(503))
      assert.is_true(o:retries_status(429))
      o.statuses = { 503 }
      assert.is_true(o:retries_status(503))
      assert.is_false(o:retries_status(500))
    end)

  it("works on duck-typed tables with defaults for missing fields", function()
    assert.is_true(strategies.retries_status({}, 502))
    assert.is_false(strategies.retries_status({}, 429))
    assert.is_true(strategies.retries_status({ statuses = { 429 } }, 429))
    assert.is_false(strategies.retries_status(
      { retry_all_server_errors = false }, 502))
  end)
end)

describe("retries_method", function()
  it("matches case-insensitively and defaults to the nine methods",
    function()
      local o = strategies.ExponentialRetry()
      for _, m in ipairs({ "GET", "get", "Post", "put", "PATCH", "delete",
        "head", "options", "trace", "connect" }) do
        assert.is_true(o:retries_method(m), m)
      end
      assert.is_false(o:retries_method("PROPFIND"))
      local only = strategies.ExponentialRetry{ methods = { "get", "propfind" } }
      assert.is_true(only:retries_method("Get"))
      assert.is_true(only:retries_method("PROPFIND"))
      assert.is_false(only:retries_method("POST"))
    end)

  it("refuses a method name that is not an HTTP token, which could never match",
    function()
      for _, bad in ipairs({ "GET POST", "", "GET:", "GE\r\nT", "G\0ET" }) do
        invalid(function() strategies.ExponentialRetry{ methods = { "GET", bad } } end,
          "'methods'", "HTTP tokens", "at index 2")
        local o = strategies.ExponentialRetry()
        o.methods = { bad }
        invalid(function() strategies.check_live(o, "retry_options") end,
          "retry_options", "'methods'")
      end
      local odd = strategies.ExponentialRetry{ methods = { "M-SEARCH", "x!#$%&'*+.^_`|~9" } }
      assert.is_true(odd:retries_method("m-search"))
      assert.is_true(odd:retries_method("X!#$%&'*+.^_`|~9"))
    end)

  it("compares at call time, even with lowercase lists set later", function()
    local o = strategies.ExponentialRetry()
    o.methods = { "post" }
    assert.is_true(strategies.retries_method(o, "POST"))
    assert.is_false(strategies.retries_method(o, "GET"))
    assert.is_true(strategies.retries_method({}, "delete"))
    assert.is_true(strategies.retries_method({ methods = { "Put" } }, "pUT"))
    assert.is_false(strategies.retries_method({ methods = {} }, "GET"))
  end)
end)

describe("retries_error_kind", function()
  it("defaults to the four transport kinds", function()
    local o = strategies.ExponentialRetry()
    for _, k in ipairs({ "connect", "dns", "timeout", "network" }) do
      assert.is_true(o:retries_error_kind(k), k)
      assert.is_true(strategies.retries_error_kind({}, k), k)
    end
    for _, k in ipairs({ "tls", "status", "cancelled", "invalid" }) do
      assert.is_false(o:retries_error_kind(k), k)
    end
  end)

  it("expands \"transport\" and accepts other kinds", function()
    local o = strategies.ExponentialRetry{ exceptions = { "transport", "tls" } }
    assert.same({ "transport", "tls" }, o.exceptions)
    for _, k in ipairs({ "connect", "dns", "timeout", "network", "tls" }) do
      assert.is_true(o:retries_error_kind(k), k)
    end
    assert.is_false(o:retries_error_kind("status"))
    local t = strategies.ExponentialRetry{ exceptions = { "timeout" } }
    assert.is_true(t:retries_error_kind("timeout"))
    assert.is_false(t:retries_error_kind("connect"))
  end)

  it("retries nothing with {}", function()
    local o = strategies.ExponentialRetry{ exceptions = {} }
    for _, k in ipairs({ "connect", "dns", "timeout", "network", "tls" }) do
      assert.is_false(o:retries_error_kind(k), k)
    end
  end)

  it("accepts an error object", function()
    local o = strategies.ExponentialRetry()
    assert.is_true(o:retries_error_kind(errors.new("dns", "no such host")))
    assert.is_false(o:retries_error_kind(errors.new("tls", "bad cert")))
  end)
end)

describe("is_options and the objects", function()
  it("is true for every class built here", function()
    for _, name in ipairs(CLASSES) do
      local o = build(name)
      assert.is_true(strategies.is_options(o), name)
      assert.equal("retry." .. name, getmetatable(o).__name)
      assert.matches("^retry%." .. name .. "{attempts=", tostring(o))
    end
    assert.equal(
      "retry.ExponentialRetry{attempts=3, start_timeout=0.1, "
        .. "max_timeout=30.0, factor=2.0}",
      tostring(strategies.ExponentialRetry()))
    assert.equal("retry.ListRetry{attempts=2, timeouts={0.1, 0.2}}",
      tostring(strategies.ListRetry{ 0.1, 0.2 }))
  end)

  it("duck-types user tables", function()
    assert.is_true(strategies.is_options(
      { attempts = 2, get_timeout = function() return 0 end }))
    assert.is_false(strategies.is_options({ attempts = 2 }))
    assert.is_false(strategies.is_options({ get_timeout = function() end }))
    assert.is_false(strategies.is_options(
      { attempts = 1.5, get_timeout = function() end }))
    assert.is_false(strategies.is_options(
      { attempts = "2", get_timeout = function() end }))
    assert.is_false(strategies.is_options({ headers = {} }))
    assert.is_false(strategies.is_options(nil))
    assert.is_false(strategies.is_options("ExponentialRetry"))
  end)
end)
