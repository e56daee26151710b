-- Beyond aiohttp-retry (issue 7, contract section 8): Retry-After,
-- deadlines, before_retry, retry budgets, hedging, circuit breakers and
-- client:stats(), each counted at the server. Timing bounds are loose
-- enough for a busy 2-core machine.
local retry = require("retry")
local h = require("helper")
local expect = require("expect")

local function counted(path) return h.counted(path, "beyond") end

local function fast(o)
  o = o or {}
  o.start_timeout = o.start_timeout or 0.001
  return retry.ExponentialRetry(o)
end

local function elapsed(f)
  local t0 = retry.now()
  local a, b = f()
  return retry.now() - t0, a, b
end

local function encode(s)
  return (s:gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end))
end

describe("Retry-After", function()
  it("waits as long as a 503 asks, in seconds", function()
    retry.run(function()
      local url, key = counted("/fail?n=1&status=503&retry_after=1")
      local client = retry.RetryClient{ retry_options = fast() }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(200, r.status)
      assert.equal(2, h.hits(retry, key))
      assert.is_true(took >= 1 and took < 1.8, tostring(took))
      assert.equal("retry_after", r.history[1].reason)
      assert.equal(1, r.history[1].wait)
      assert.equal(1, client:stats().retries_by_reason.retry_after)
    end)
  end)

  it("waits as long as a 429 asks, as an HTTP date", function()
    retry.run(function()
      local date = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      local url, key = counted("/fail?n=1&status=429&retry_after=" .. encode(date))
      local client = retry.RetryClient{ retry_options = fast{ statuses = { 429 } } }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(200, r.status)
      assert.equal(2, h.hits(retry, key))
      -- The date has whole seconds: 1 to 2 s from now.
      assert.is_true(took >= 0.95 and took < 2.8, tostring(took))
      assert.equal("retry_after", r.history[1].reason)
    end)
  end)

  it("takes the strategy's wait when it is longer", function()
    retry.run(function()
      local url, key = counted("/fail?n=1&status=503&retry_after=1")
      local client = retry.RetryClient{ retry_options = retry.ListRetry{
        timeouts = { 1.5 }, attempts = 2 } }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(200, r.status)
      assert.is_true(took >= 1.5, tostring(took))
      assert.equal("status", r.history[1].reason)
      assert.equal(2, h.hits(retry, key))
    end)
  end)

  it("over max_retry_after, stops retrying and returns the response", function()
    retry.run(function()
      local url, key = counted("/fail?n=1&status=503&retry_after=5")
      local client = retry.RetryClient{ retry_options = fast{ max_retry_after = 2 } }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(503, r.status)
      assert.equal(1, r.attempts)
      assert.equal(1, h.hits(retry, key))
      assert.is_true(took < 0.5, tostring(took))
    end)
  end)

  it("takes a number of seconds too large to read as over max_retry_after",
    function()
      retry.run(function()
        -- libcurl reads both as 0 ("now"); the server asks for ages.
        for _, ra in ipairs({ "99999999999999999999", "9223372036854775808",
            "99999999999999999999x", "+99999999999999999999" }) do
          local url, key = counted("/fail?n=1&status=503&retry_after=" .. ra)
          -- Even a cap of math.huge: no wait could honour it.
          local client = retry.RetryClient{
            retry_options = fast{ max_retry_after = math.huge } }
          local r = client:get(url)
          assert.equal(503, r.status)
          assert.equal(math.huge, r.retry_after)
          assert.equal(1, r.attempts)
          assert.equal(1, h.hits(retry, key))
        end
        -- Zero and what is not a number still mean no wait of its own.
        for _, ra in ipairs({ "0", "000", "soon", "0x" }) do
          local url, key = counted("/fail?n=1&status=503&retry_after=" .. ra)
          local r = retry.RetryClient{ retry_options = fast() }:get(url)
          assert.equal(200, r.status)
          assert.equal("status", r.history[1].reason)
          assert.equal(2, h.hits(retry, key))
        end
      end)
    end)

  it("is ignored when respect_retry_after is false, and on other statuses", function()
    retry.run(function()
      local url, key = counted("/fail?n=1&status=503&retry_after=5")
      local client = retry.RetryClient{ retry_options = fast{ respect_retry_after = false } }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(200, r.status)
      assert.is_true(took < 0.5, tostring(took))
      assert.equal(2, h.hits(retry, key))
      local url2, key2 = counted("/fail?n=1&status=500&retry_after=5")
      took, r = elapsed(function() return retry.RetryClient{
        retry_options = fast() }:get(url2) end)
      assert.equal(200, r.status)
      assert.is_true(took < 0.5, tostring(took))
      assert.equal(2, h.hits(retry, key2))
    end)
  end)
end)

describe("deadline", function()
  it("starts no wait that would end past it: the last response is the outcome", function()
    retry.run(function()
      local url, key = counted("/status/503")
      local client = retry.RetryClient{ retry_options = retry.ListRetry{
        timeouts = { 1 }, attempts = 3 }, deadline = 0.3 }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(503, r.status)
      assert.equal(1, h.hits(retry, key))
      assert.is_true(took < 0.3, tostring(took))
    end)
  end)

  it("cuts a slow attempt: a timeout error that names the deadline", function()
    retry.run(function()
      local url, key = counted("/delay/5000")
      local client = retry.RetryClient()
      local took, err = elapsed(function()
        return expect.raises("timeout", client.get, client, url, { deadline = 0.2 })
      end)
      assert.matches("deadline", err.message)
      assert.is_true(took >= 0.2 and took < 0.7, tostring(took))
      assert.equal(1, h.hits(retry, key))
      retry.sleep(0.05)
      assert.equal(1, h.counts(retry, key).aborted)
    end)
  end)

  it("cuts a slow retry: the response before it is the outcome", function()
    retry.run(function()
      local first, key1 = counted("/status/503")
      local slow, key2 = counted("/delay/5000")
      local client = retry.RetryClient{ retry_options = fast() }
      local took, r = elapsed(function()
        return client:get({ first, slow }, { deadline = 0.3 })
      end)
      assert.equal(503, r.status)
      assert.equal("", r:text() == nil and "x" or "") -- its body is readable
      assert.is_true(took >= 0.29 and took < 0.8, tostring(took))
      assert.equal(1, h.hits(retry, key1))
      assert.equal(1, h.hits(retry, key2))
    end)
  end)

  it("sends nothing once it has passed while the request waited for a "
    .. "connection slot", function()
    retry.run(function()
      local slow = counted("/delay/500")
      local url, key = counted("/echo")
      local client = retry.RetryClient{ limit = 1 }
      -- A kept-alive connection, on which libcurl would write a request
      -- the moment its transfer started.
      client:get(h.url("/hello")):close()
      local holder = retry.spawn(function() client:get(slow):close() end)
      retry.sleep(0.05)
      local took, err = elapsed(function()
        return expect.raises("timeout", client.post, client, url,
          { deadline = 0.2, data = "pay 100" })
      end)
      assert.matches("deadline", err.message)
      assert.is_true(took < 0.5, tostring(took))
      holder:await()
      assert.equal(0, h.settled_hits(retry, key))
      assert.equal(2, client:stats().attempts) -- /hello and the slow one
    end)
  end)

  it("refuses a deadline that is not a positive number", function()
    expect.invalid("deadline", retry.RetryClient, { deadline = 0 })
    retry.run(function()
      local client = retry.RetryClient()
      expect.invalid("deadline", client.get, client, h.url("/"), { deadline = "1" })
    end)
  end)
end)

describe("before_retry", function()
  it("sees the outcome and the wait, and may change the next attempt", function()
    retry.run(function()
      local bad, key1 = counted("/status/503")
      local good, key2 = counted("/hello")
      local seen
      local client = retry.RetryClient{ retry_options = fast() }
      local r = client:get(bad, { before_retry = function(ctx)
        seen = { attempt = ctx.attempt, status = ctx.response.status,
          wait = ctx.wait, url = ctx.next.url, method = ctx.next.method }
        retry.sleep(0.01) -- it may wait
        ctx.next.url = good
        ctx.next.headers["X-Tried"] = "1"
        ctx.wait = 0.2
      end })
      assert.equal(200, r.status)
      assert.equal(1, seen.attempt)
      assert.equal(503, seen.status)
      assert.equal("number", type(seen.wait))
      assert.equal(bad, seen.url)
      assert.equal("GET", seen.method)
      assert.equal(0.2, r.history[1].wait)
      assert.equal(1, h.hits(retry, key1))
      assert.equal(1, h.hits(retry, key2))
    end)
  end)

  it("returning false stops with the last outcome; errors are seen too", function()
    retry.run(function()
      local url, key = counted("/status/503")
      local client = retry.RetryClient{ retry_options = fast{
        before_retry = function() return false end } }
      local r = client:get(url)
      assert.equal(503, r.status)
      assert.equal(1, h.hits(retry, key))
      local got
      local err = expect.raises("connect", client.get, client,
        "http://127.0.0.1:1/", { before_retry = function(ctx)
          got = ctx.error
          return false
        end })
      assert.equal(err, got)
      assert.equal(1, err.attempt)
    end)
  end)
end)

describe("before_retry, in place", function()
  it("a header added to ctx.next.headers goes out with the next attempt", function()
    retry.run(function()
      local bad = counted("/status/503")
      local client = retry.RetryClient{ retry_options = fast() }
      local r = client:get({ bad, h.url("/echo") }, { before_retry = function(ctx)
        ctx.next.headers["X-Tried"] = tostring(ctx.attempt)
      end })
      assert.equal(200, r.status)
      assert.equal("1", r:json().headers["x-tried"])
    end)
  end)

  it("names ctx.next in every error about the next attempt", function()
    retry.run(function()
      local bad, key = counted("/status/503")
      local client = retry.RetryClient{ retry_options = fast() }
      for _, case in ipairs{
        { function(x) x.headers = 5 end, "headers must be a table, got number" },
        { function(x) x.data = {} end, "body must be a string" },
        { function(x) x.url = "notaurl" end, "url must be an absolute" },
      } do
        expect.invalid("^before_retry: ctx%.next: " .. case[2], client.get,
          client, bad, { before_retry = function(ctx) case[1](ctx.next) end })
      end
      assert.equal(3, h.hits(retry, key)) -- the first attempts alone
    end)
  end)
end)

describe("retry budget", function()
  it("holds a burst of failing requests to about (1 + ratio) x requests plus the floor", function()
    retry.run(function()
      local url, key = counted("/status/503")
      local budget = retry.RetryBudget{ ratio = 0.2, min_per_second = 1, ttl = 10 }
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 },
        budget = budget }
      local tasks = {}
      for i = 1, 50 do
        tasks[i] = retry.spawn(function() return client:get(url).status end)
      end
      for _, s in ipairs(retry.gather(tasks)) do assert.equal(503, s) end
      local hits = h.hits(retry, key)
      -- 50 requests, 0.2 x 50 = 10 retries, a floor of 1/s x 10 s = 10.
      assert.is_true(hits <= 50 + 10 + 10 + 1, "hits " .. hits)
      assert.is_true(hits >= 50 + 10, "hits " .. hits)
      local stats = client:stats()
      assert.equal(hits, stats.attempts)
      assert.equal(50, stats.requests)
      assert.equal(hits - 50, stats.retries)
      assert.is_true(stats.budget_refusals > 0)
      assert.equal(stats.budget_refusals, budget.refusals)
    end)
  end)

  it("without a budget the same burst makes every attempt", function()
    retry.run(function()
      local url, key = counted("/status/503")
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 } }
      local tasks = {}
      for i = 1, 50 do
        tasks[i] = retry.spawn(function() return client:get(url).status end)
      end
      retry.gather(tasks)
      assert.equal(150, h.hits(retry, key))
    end)
  end)

  it("refuses bad fields", function()
    expect.invalid("ratio", retry.RetryBudget, { ratio = -1 })
    expect.invalid("ttl", retry.RetryBudget, { ttl = 0 })
    expect.invalid("unknown option", retry.RetryBudget, { rate = 1 })
    expect.invalid("budget", retry.RetryClient, { budget = {} })
  end)
end)

describe("hedging", function()
  it("a copy beats a slow first attempt; the slow one is cancelled in flight", function()
    retry.run(function()
      local url, key = counted("/delay/5000?first=1")
      local client = retry.RetryClient{ hedge = { delay = 0.05, max = 2 } }
      local took, r = elapsed(function() return client:get(url) end)
      assert.equal(200, r.status)
      assert.is_true(took < 1, tostring(took))
      assert.equal(1, r.history[1].hedges)
      retry.sleep(0.05)
      local c = h.counts(retry, key)
      assert.equal(2, c.hits)
      assert.equal(1, c.aborted, "the server saw the slow copy's connection go")
      local stats = client:stats()
      assert.equal(1, stats.hedges)
      assert.equal(c.hits, stats.attempts + stats.hedges)
    end)
  end)

  it("asks evaluate_response_callback once for the answer that wins", function()
    retry.run(function()
      local url, key = counted("/delay/100")
      local asked = 0
      -- Accepts every other response it is shown: asked twice about the
      -- winner, it would reject it and retry.
      local client = retry.RetryClient{ hedge = { delay = 0.02, max = 2 },
        retry_options = fast{ attempts = 2,
          evaluate_response_callback = function()
            asked = asked + 1
            return asked % 2 == 1
          end } }
      local r <close> = client:get(url)
      assert.equal(200, r.status)
      assert.equal(1, r.attempts)
      assert.equal(1, asked)
      assert.is_nil(r.history[1].reason)
      assert.equal(2, h.settled_hits(retry, key)) -- the first and one copy
      assert.equal(0, client:stats().retries)
    end)
  end)

  it("ends the attempt's trace when the callback raises while copies are out",
    function()
      retry.run(function()
        local url = counted("/delay/100")
        local seen = {}
        local client = retry.RetryClient{ hedge = { delay = 0.02, max = 2 },
          retry_options = fast{ attempts = 2,
            evaluate_response_callback = function() error("cb boom", 0) end },
          trace_configs = { {
            on_request_start = function() seen[#seen + 1] = "start" end,
            on_request_end = function() seen[#seen + 1] = "end" end,
            on_request_exception = function(_, _, params)
              seen[#seen + 1] = params.exception
            end } } }
        local ok, err = pcall(client.get, client, url)
        assert.is_false(ok)
        assert.equal("cb boom", err)
        assert.same({ "start", "cb boom" }, seen)
      end)
    end)

  it("counts as hedges the copies that went out, as the server counts them", function()
    -- Copies due a fraction of a millisecond after their first: many are
    -- started in the loop turn whose answer wins, and cancelled before
    -- libcurl was given them.
    retry.run(function()
      local url, key = counted("/hello")
      local client = retry.RetryClient{ limit = 0,
        hedge = { delay = 0.0003, max = 3 } }
      local copies = 0
      local tasks = {}
      for i = 1, 600 do
        tasks[i] = retry.spawn(function()
          local r <close> = client:get(url)
          copies = copies + 1 + (r.history[1].hedges or 0)
        end)
      end
      retry.gather(tasks)
      local stats = client:stats()
      local hits = h.hits(retry, key)
      assert.equal(hits, copies)
      assert.equal(hits, stats.attempts + stats.hedges)
      assert.is_true(stats.hedges > 0, "no copy went out: nothing was tested")
    end)
  end)

  it("counts the copies that went out of a request whose task is cancelled", function()
    retry.run(function()
      local url, key = counted("/delay/3000")
      local client = retry.RetryClient{ hedge = { delay = 0.05, max = 3 } }
      local t = retry.spawn(function() return client:get(url) end)
      retry.sleep(0.3) -- the first and both copies are out
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      retry.sleep(0.05)
      local stats = client:stats()
      assert.equal(3, h.hits(retry, key))
      assert.equal(1, stats.attempts)
      assert.equal(2, stats.hedges)
    end)
  end)

  it("sends no copy when the answer comes within the delay, nor for POST", function()
    retry.run(function()
      local url, key = counted("/delay/10")
      local client = retry.RetryClient{ hedge = { delay = 0.3 } }
      client:get(url):close()
      assert.equal(1, h.hits(retry, key))
      local slow, key2 = counted("/delay/400")
      client:post(slow, { hedge = { delay = 0.05, max = 3 } }):close()
      assert.equal(1, h.hits(retry, key2))
      assert.equal(0, client:stats().hedges)
    end)
  end)

  it("a callback error cancels the copies still out", function()
    retry.run(function()
      local url, key = counted("/delay/3000?first=1")
      local client = retry.RetryClient{ hedge = { delay = 0.05 },
        retry_options = fast{ evaluate_response_callback = function()
          error("bad callback")
        end } }
      local ok, err = pcall(client.get, client, url)
      assert.is_false(ok)
      assert.matches("bad callback", tostring(err))
      retry.sleep(0.05)
      assert.equal(0, require("retry.core").counts().transfers)
      assert.equal(1, h.counts(retry, key).aborted)
      assert.equal(2, client:stats().attempts + client:stats().hedges)
    end)
  end)

  it("refuses a bad hedge", function()
    expect.invalid("hedge.delay", retry.RetryClient, { hedge = { max = 2 } })
    expect.invalid("hedge.max", retry.RetryClient, { hedge = { delay = 0.1, max = 0 } })
    expect.invalid("hedge", retry.RetryClient, { hedge = 3 })
  end)
end)

describe("circuit breaker", function()
  it("opens, fails fast, half-opens, closes; re-opens on a failed trial", function()
    retry.run(function()
      local changes, warnings = {}, {}
      local logger = { debug = function() end,
        warning = function(_, m) warnings[#warnings + 1] = m end }
      local breaker = retry.CircuitBreaker{ failure_ratio = 0.5,
        min_requests = 4, window = 10, open_for = 0.3 }
      local client = retry.RetryClient{ retry_options = fast{ attempts = 1 },
        breaker = breaker, logger = logger, trace_configs = { {
          on_breaker_change = function(_, ctx)
            changes[#changes + 1] = ctx.from .. ">" .. ctx.to
          end } } }
      local bad, key = counted("/status/503")
      for _ = 1, 4 do assert.equal(503, client:get(bad).status) end
      assert.equal("open", breaker.state)
      local took, err = elapsed(function()
        return expect.raises("circuit_open", client.get, client, bad)
      end)
      assert.is_true(took < 0.05)
      assert.equal(4, h.hits(retry, key))
      retry.sleep(0.35)
      -- The trial fails: open again.
      assert.equal(503, client:get(bad).status)
      assert.equal("open", breaker.state)
      expect.raises("circuit_open", client.get, client, h.url("/hello"))
      retry.sleep(0.35)
      local r = client:get(h.url("/hello"))
      assert.equal(200, r.status)
      assert.equal("closed", breaker.state)
      assert.same({ "closed>open", "open>half_open", "half_open>open",
        "open>half_open", "half_open>closed" }, changes)
      assert.equal(5, #warnings)
      assert.equal(2, client:stats().breaker_opens)
      assert.is_not_nil(err)
    end)
  end)

  it("lets the half-open trial request make its retries", function()
    retry.run(function()
      local breaker = retry.CircuitBreaker{ min_requests = 2, open_for = 0.2 }
      local client = retry.RetryClient{ retry_options = fast{ attempts = 1 },
        breaker = breaker }
      for _ = 1, 2 do client:get((counted("/status/503"))):close() end
      assert.equal("open", breaker.state)
      retry.sleep(0.25)
      -- The trial fails once, then succeeds on its retry.
      local url, key = counted("/fail?n=1&status=503")
      local r = client:get(url, fast{ attempts = 2 })
      assert.equal(200, r.status)
      assert.equal(2, h.hits(retry, key))
      assert.equal("closed", breaker.state)
    end)
  end)

  it("a retry refused by the open breaker returns the last outcome", function()
    retry.run(function()
      local breaker = retry.CircuitBreaker{ min_requests = 1, open_for = 10 }
      local a = retry.RetryClient{ retry_options = fast{ attempts = 1 }, breaker = breaker }
      local b = retry.RetryClient{ retry_options = retry.ListRetry{ timeouts = { 0.2 },
        attempts = 2 }, breaker = breaker }
      local url, key = counted("/status/503")
      local t = retry.spawn(function() return b:get(url) end)
      retry.sleep(0.05) -- b's first attempt got its 503 and waits
      a:get((counted("/status/503"))):close() -- opens the shared breaker
      assert.equal("open", breaker.state)
      local r = t:await()
      assert.equal(503, r.status)
      assert.equal(1, r.attempts)
      assert.equal(1, h.hits(retry, key))
      -- The retry planned was not made: neither its record nor the stats
      -- say it was.
      assert.is_nil(r.history[1].reason)
      assert.is_nil(r.history[1].wait)
      assert.equal(0, b:stats().retries)
      assert.is_nil(next(b:stats().retries_by_reason))
    end)
  end)

  it("counts a request as failed only when its final outcome would be retried", function()
    retry.run(function()
      local breaker = retry.CircuitBreaker{ min_requests = 2, open_for = 10 }
      local client = retry.RetryClient{ retry_options = fast{ attempts = 2 },
        breaker = breaker }
      local url = counted("/fail?n=1&status=503")
      for _ = 1, 3 do client:get((counted("/fail?n=1&status=503"))):close() end
      assert.equal("closed", breaker.state)
      assert.equal(404, client:get(h.url("/status/404")).status)
      assert.equal("closed", breaker.state)
      assert.is_string(url)
    end)
  end)
end)

describe("client:close() in a hook", function()
  it("closing in on_request_start sends nothing", function()
    retry.run(function()
      local url, key = counted("/hello")
      local client
      client = retry.RetryClient{ trace_configs = { {
        on_request_start = function() client:close() end } } }
      expect.raises("cancelled", client.get, client, url)
      assert.equal(0, h.hits(retry, key))
      assert.equal(0, client:stats().attempts)
    end)
  end)
end)

describe("client:stats()", function()
  it("matches the server's hit counts", function()
    retry.run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 } }
      local a, key_a = counted("/fail?n=2&status=503")
      local b, key_b = counted("/status/500")
      client:get(a):close()
      client:get(b):close()
      local s = client:stats()
      assert.equal(2, s.requests)
      assert.equal(h.hits(retry, key_a) + h.hits(retry, key_b), s.attempts)
      assert.equal(s.attempts - s.requests, s.retries)
      assert.equal(4, s.retries_by_reason.status)
      assert.equal(0, s.budget_refusals)
      assert.equal(0, s.hedges)
      assert.equal(0, s.breaker_opens)
    end)
  end)

  it("counts a retry when its attempt starts, not when it is planned", function()
    retry.run(function()
      local client = retry.RetryClient{ retry_options = retry.ListRetry{
        timeouts = { 5 }, attempts = 2 } }
      local url, key = counted("/status/503")
      -- Cancelled in its wait, and closed in its wait: neither retry is made.
      local cancelled = retry.spawn(function() return client:get(url) end)
      local closed = retry.RetryClient{ retry_options = retry.ListRetry{
        timeouts = { 5 }, attempts = 2 } }
      local other = retry.spawn(function() return closed:get(url) end)
      while client:stats().attempts + closed:stats().attempts < 2 do
        retry.sleep(0.01)
      end
      retry.sleep(0.1) -- both got their 503 and wait
      cancelled:cancel()
      closed:close()
      expect.raises("cancelled", cancelled.await, cancelled)
      expect.raises("cancelled", other.await, other)
      assert.equal(2, h.hits(retry, key))
      for _, c in ipairs{ client, closed } do
        local s = c:stats()
        assert.equal(1, s.attempts)
        assert.equal(0, s.retries)
        assert.is_nil(next(s.retries_by_reason))
      end
    end)
  end)
end)
