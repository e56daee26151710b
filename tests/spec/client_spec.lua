-- RetryClient against the bundled server: aiohttp-retry's own test suite
-- translated to Lua, plus the cases issue 3 adds. Waits are kept tiny.
local retry = require("retry")
local h = require("helper")
local expect = require("expect")

local function fast(o)
  o = o or {}
  o.start_timeout = o.start_timeout or 0.001
  return retry.ExponentialRetry(o)
end

local function run(f) return retry.run(f) end

-- A fresh /fail URL: the first n hits of its key get `status`, then 200.
local function flaky(n, status, extra)
  local key = h.key("flaky")
  return h.url(("/fail?n=%d&status=%d&key=%s%s"):format(n, status or 500, key,
    extra or "")), key
end

local function counted(path)
  local key = h.key("count")
  return h.url(path .. (path:find("?", 1, true) and "&" or "?") .. "key=" .. key), key
end

describe("RetryClient", function()
  it("hello: get, request, and a to-be-closed client", function()
    run(function()
      local client <close> = retry.RetryClient()
      local r <close> = client:get(h.url("/hello"))
      assert.equal(200, r.status)
      assert.equal("hello\n", r:text())
      assert.equal(1, r.attempts)
      local r2 = client:request("GET", h.url("/hello"))
      assert.equal(200, r2.status)
      assert.is_false(client.closed)
    end)
  end)

  it("closes: idempotent, and a request on a closed client raises", function()
    run(function()
      local client
      do
        local c <close> = retry.RetryClient()
        client = c
      end
      assert.is_true(client.closed)
      client:close()
      local ok, err = pcall(client.get, client, h.url("/hello"))
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "invalid"))
      assert.matches("closed", err.message)
    end)
  end)

  it("close cancels requests in progress in other tasks", function()
    run(function()
      local client = retry.RetryClient()
      local t = retry.spawn(function() return client:get(h.url("/delay/3000")) end)
      retry.sleep(0.05)
      local t0 = retry.now()
      client:close()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "cancelled"))
      assert.is_true(retry.now() - t0 < 1)
    end)
  end)

  it("retries an internal error up to 5 attempts", function()
    run(function()
      local url, key = counted("/status/500")
      local client = retry.RetryClient{ retry_options = fast{ attempts = 5 } }
      local r = client:get(url)
      assert.equal(500, r.status)
      assert.equal(5, r.attempts)
      assert.equal(5, h.hits(retry, key))
    end)
  end)

  it("retries not-found when it is listed in statuses", function()
    run(function()
      local url, key = counted("/status/404")
      local client = retry.RetryClient{
        retry_options = fast{ attempts = 5, statuses = { 404 } } }
      assert.equal(404, client:get(url).status)
      assert.equal(5, h.hits(retry, key))
      local plain, plain_key = counted("/status/404")
      assert.equal(404, retry.RetryClient{ retry_options = fast() }:get(plain).status)
      assert.equal(1, h.hits(retry, plain_key))
    end)
  end)

  it("sees a change made in place to its strategy on the next request", function()
    -- The strategy's fields and lists are live: the server counts what
    -- each request after each change sends.
    run(function()
      local options = fast{ attempts = 3 }
      local client <close> = retry.RetryClient{ retry_options = options }
      local function hits_of_one_get()
        local url, key = counted("/status/404")
        assert.equal(404, client:get(url).status)
        return h.hits(retry, key)
      end
      assert.equal(1, hits_of_one_get())
      options.statuses[#options.statuses + 1] = 404
      assert.equal(3, hits_of_one_get())
      options.attempts = 2
      assert.equal(2, hits_of_one_get())
      options.attempts = 3.0 -- an integral float, as the constructor takes
      assert.equal(3, hits_of_one_get())
      options.attempts = 2
      table.remove(options.statuses)
      assert.equal(1, hits_of_one_get())
      options.statuses = { 404 }
      assert.equal(2, hits_of_one_get())
      options.methods[1] = "PUT" -- GET is the first of the nine
      assert.equal(1, hits_of_one_get())
      -- One that stops being a strategy is named before anything is sent.
      setmetatable(options, nil)
      local url, key = counted("/status/404")
      expect.invalid("retry_options must be retry options", client.get,
        client, url)
      assert.equal(0, h.hits(retry, key))
    end)
  end)

  it("succeeds on the 3rd attempt of a sometimes-error endpoint", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 5 } }
      local url, key = flaky(2, 500)
      local r = client:get(url)
      assert.equal(200, r.status)
      assert.equal(3, r.attempts)
      assert.equal(3, h.hits(retry, key))
      assert.same({ 500, 500, 200 },
        { r.history[1].status, r.history[2].status, r.history[3].status })
      assert.is_number(r.history[1].wait)
      assert.is_nil(r.history[3].wait)
      assert.is_true(r.elapsed >= r.history[1].wait + r.history[2].wait)
    end)
  end)

  it("with raise_for_status and exceptions={'status'}: retried, then succeeds", function()
    run(function()
      local client = retry.RetryClient{ raise_for_status = true,
        retry_options = fast{ attempts = 5, exceptions = { "status" },
          retry_all_server_errors = false } }
      local url, key = flaky(2, 500)
      assert.equal(200, client:get(url).status)
      assert.equal(3, h.hits(retry, key))
    end)
  end)

  it("raise_for_status raises a status error after the last attempt", function()
    run(function()
      local client = retry.RetryClient{ raise_for_status = true,
        retry_options = fast{ attempts = 2 } }
      local url, key = counted("/status/503")
      local ok, err = pcall(client.get, client, url)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "status"))
      assert.equal(503, err.status)
      assert.equal(503, err.response.status)
      assert.equal(2, err.attempt)
      assert.equal(2, h.hits(retry, key))
      -- per-call override
      assert.equal(503, client:get(url, { raise_for_status = false }).status)
    end)
  end)

  it("per-call options override the client's", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 1 } }
      local url, key = flaky(2, 500)
      local r = client:get(url, fast{ attempts = 5 })
      assert.equal(200, r.status)
      assert.equal(3, h.hits(retry, key))
      url, key = flaky(2, 500)
      r = client:get(url, { retry_options = fast{ attempts = 2 } })
      assert.equal(500, r.status)
      assert.equal(2, h.hits(retry, key))
      url, key = flaky(2, 500)
      assert.equal(500, client:get(url).status)
      assert.equal(1, h.hits(retry, key))
    end)
  end)

  it("passes trace context with the caller's fields and current_attempt", function()
    run(function()
      local starts, ends = {}, {}
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 },
        trace_configs = { {
          on_request_start = function(c, ctx, params)
            starts[#starts + 1] = { c = c, ctx = ctx.trace_request_ctx,
              method = params.method, url = params.url }
          end,
          on_request_end = function(_, ctx, params)
            ends[#ends + 1] = { ctx.trace_request_ctx.current_attempt,
              params.response.status }
          end,
        } } }
      local url = flaky(2, 500)
      client:get(url, { trace_request_ctx = { foo = "bar" } })
      assert.equal(3, #starts)
      for i = 1, 3 do
        assert.equal(client, starts[i].c)
        assert.same({ foo = "bar", current_attempt = i }, starts[i].ctx)
        assert.equal("GET", starts[i].method)
        assert.equal(url, starts[i].url)
      end
      assert.same({ { 1, 500 }, { 2, 500 }, { 3, 200 } }, ends)
    end)
  end)

  it("calls on_request_exception for transport errors", function()
    run(function()
      local seen = {}
      local client = retry.RetryClient{ retry_options = fast{ attempts = 2 },
        trace_configs = { { on_request_exception = function(_, ctx, params)
          seen[#seen + 1] = { ctx.trace_request_ctx.current_attempt,
            params.exception.kind }
        end } } }
      expect.raises("connect", client.get, client, "http://127.0.0.1:1/")
      assert.same({ { 1, "connect" }, { 2, "connect" } }, seen)
    end)
  end)

  it("ends every started attempt with a hook call, cancelled or closed too",
    function()
      run(function()
        local started, ended = 0, {}
        local client = retry.RetryClient{ limit = 2, trace_configs = { {
          on_request_start = function() started = started + 1 end,
          on_request_end = function() ended[#ended + 1] = "end" end,
          on_request_exception = function(_, _, params)
            ended[#ended + 1] = params.exception.kind
          end } } }
        local url, key = counted("/delay/2000")
        -- Two in flight, two waiting for a slot.
        local tasks = {}
        for i = 1, 4 do
          tasks[i] = retry.spawn(function() return client:get(url) end)
        end
        while h.counts(retry, key).hits < 2 do retry.sleep(0.01) end
        tasks[1]:cancel() -- in flight: its slot goes to the third
        while h.counts(retry, key).hits < 3 do retry.sleep(0.01) end
        client:close() -- two in flight, the fourth in its wait for a slot
        for i = 1, 4 do
          local err = expect.raises("cancelled", tasks[i].await, tasks[i])
          assert.equal(1, err.attempt)
          assert.equal(url, err.url)
          assert.equal("GET", err.method)
        end
        assert.equal(4, started)
        assert.same({ "cancelled", "cancelled", "cancelled", "cancelled" },
          ended)
        assert.equal(3, h.hits(retry, key))
      end)
    end)

  it("uses url lists: attempt n uses url[n], then the last", function()
    run(function()
      local bad, bad_key = counted("/status/500")
      local good, good_key = counted("/hello")
      local client = retry.RetryClient{ retry_options = fast{ attempts = 2 } }
      local r = client:get({ bad, good })
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      assert.equal(1, h.hits(retry, bad_key))
      assert.equal(1, h.hits(retry, good_key))
      local bad2, bad2_key = counted("/status/500")
      local last, last_key = counted("/status/500")
      r = client:get({ bad2, last }, fast{ attempts = 3 })
      assert.equal(500, r.status)
      assert.equal(3, r.attempts)
      assert.equal(1, h.hits(retry, bad2_key))
      assert.equal(2, h.hits(retry, last_key))
    end)
  end)

  it("rejects bad urls before sending anything", function()
    run(function()
      local client = retry.RetryClient()
      for _, url in ipairs({ {}, { a = "http://x/" }, 42, { [1] = "x", [3] = "y" },
        { 1, 2 }, "" }) do
        local ok, err = pcall(client.get, client, url)
        assert.is_false(ok)
        assert.is_true(retry.is_error(err, "invalid"))
        assert.matches("url", err.message)
      end
    end)
  end)

  it("sends each HTTP method", function()
    run(function()
      local client = retry.RetryClient()
      for _, m in ipairs({ "get", "post", "put", "patch", "delete", "options" }) do
        local r = client[m](client, h.url("/echo"))
        assert.equal(m:upper(), r:json().method)
      end
      local r = client:head(h.url("/hello"))
      assert.equal(200, r.status)
      assert.equal("HEAD", r.method)
      assert.equal("PUT", client:request("put", h.url("/echo")):json().method)
    end)
  end)

  it("sends basic auth", function()
    run(function()
      local client = retry.RetryClient()
      assert.equal(200, client:get(h.url("/auth/alice/secret"),
        { auth = { "alice", "secret" } }).status)
      assert.equal(401, client:get(h.url("/auth/alice/secret")).status)
    end)
  end)

  it("sends client and request headers, the request's winning", function()
    run(function()
      local client = retry.RetryClient{ headers = { ["X-Client"] = "c",
        ["X-Both"] = "client" } }
      local e = client:get(h.url("/echo"), { headers = { ["x-both"] = "call",
        ["X-Call"] = "1" } }):json()
      assert.equal("c", e.headers["x-client"])
      assert.equal("call", e.headers["x-both"])
      assert.equal("1", e.headers["x-call"])
    end)
  end)

  it("a repeated plain call sends the client's fields as they are now", function()
    run(function()
      local client <close> = retry.RetryClient{ base_url = h.url(""),
        headers = { ["X-A"] = "1" } }
      assert.equal("1", client:get("/echo"):json().headers["x-a"])
      client.headers["X-A"] = "2" -- in place
      assert.equal("2", client:get("/echo"):json().headers["x-a"])
      client.headers = { ["X-B"] = "3" } -- a new table
      local e = client:get("/echo"):json()
      assert.is_nil(e.headers["x-a"])
      assert.equal("3", e.headers["x-b"])

      assert.equal("POST", client:post("/echo"):json().method)
      client.base_url = h.url("/hello")
      local r = client:get("/echo")
      assert.truthy(r.url:find("/hello/echo$"), r.url)
      client.base_url = h.url("")
      client.timeout = 0.05
      local ok, err = pcall(client.get, client, "/delay/1000")
      assert.is_false(ok)
      assert.equal("timeout", err.kind)
      client.timeout = 300
      assert.equal(200, client:get("/delay/1").status)
    end)
  end)

  it("prepare: sends its request with retries at every call, until the "
    .. "client closes (lretry load's requests)", function()
    run(function()
      local client_mod = require("retry.client")
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 },
        headers = { ["X-Load"] = "1" } }
      local url, key = flaky(1, 503, "")
      local send = client_mod.prepare(client, "post", url, { data = "body" })
      local r = send()
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      assert.equal(2, #r.history)
      r:close()
      assert.equal(2, h.hits(retry, key))
      -- The same request again, from the same tables: one more hit, and
      -- the method, body and client headers went out each time.
      local echo = client_mod.prepare(client, "POST", h.url("/echo"),
        { data = "body" })
      for _ = 1, 2 do
        local e = echo():json()
        assert.equal("POST", e.method)
        assert.equal("body", e.body)
        assert.equal("1", e.headers["x-load"])
      end
      send():close()
      assert.equal(3, h.hits(retry, key))
      local stats = client:stats()
      assert.equal(4, stats.requests)
      assert.equal(5, stats.attempts)
      client:close()
      local ok, err = pcall(send)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "invalid"))
      assert.matches("closed", err.message)
      -- What it is given is checked when it is made.
      expect.invalid("retry_options", client_mod.prepare, retry.RetryClient{},
        "GET", url, { retry_options = 5 })
    end)
  end)

  it("prepare, plain path (lretry load's own client): a response that "
    .. "stands ends the request at once, anything else goes on to the retry "
    .. "loop, counted at the server", function()
    run(function()
      local client_mod = require("retry.client")
      local client <close> = retry.RetryClient{ limit = 0,
        retry_options = fast{ attempts = 3 } }
      -- Stands: one hit per call, and the request's history is that one
      -- attempt.
      local url, key = counted("/status/404")
      local send = client_mod.prepare(client, "GET", url)
      for i = 1, 2 do
        local r <close> = send()
        assert.equal(404, r.status)
        assert.equal(1, r.attempts)
        assert.equal(1, #r.history)
        assert.same({ 1, 404 }, { r.history[1].attempt, r.history[1].status })
        assert.is_true(r.elapsed >= r.history[1].elapsed)
        assert.equal(i, h.hits(retry, key))
      end
      -- Retried at every call, not only the first that met the status.
      url, key = counted("/status/503")
      send = client_mod.prepare(client, "GET", url)
      for i = 1, 2 do
        local r <close> = send()
        assert.equal(503, r.status)
        assert.equal(3, r.attempts)
        assert.same({ 503, 503, 503 }, { r.history[1].status,
          r.history[2].status, r.history[3].status })
        assert.equal(3 * i, h.hits(retry, key))
      end
      -- Retried after a status, then standing.
      url, key = flaky(1, 503, "")
      local r = client_mod.prepare(client, "GET", url)()
      assert.same({ 200, 2, 503, 200 }, { r.status, r.attempts,
        r.history[1].status, r.history[2].status })
      r:close()
      assert.equal(2, h.hits(retry, key))
      -- Dropped connections: an error, retried. libcurl sends a request
      -- again by itself when a kept-alive connection was dead (`resent`):
      -- the server saw that many.
      local function sent(history)
        local n = 0
        for _, rec in ipairs(history) do n = n + (rec.resent and 2 or 1) end
        return n
      end
      url, key = counted("/close?n=2")
      r = client_mod.prepare(client, "GET", url)()
      assert.equal(200, r.status)
      assert.is_true(r.attempts >= 2)
      assert.is_true(retry.is_error(r.history[1].error))
      assert.equal(1, r.history[1].error.attempt)
      assert.equal(200, r.history[r.attempts].status)
      r:close()
      assert.equal(sent(r.history), h.hits(retry, key))
      local dropped_attempts = r.attempts
      -- One attempt allowed: whatever comes back stands.
      local once <close> = retry.RetryClient{ limit = 0,
        retry_options = fast{ attempts = 1 } }
      url, key = counted("/status/503")
      r = client_mod.prepare(once, "GET", url)()
      assert.same({ 503, 1, 1 }, { r.status, r.attempts, #r.history })
      r:close()
      url, key = counted("/close?n=5")
      local ok, err = pcall(client_mod.prepare(once, "GET", url))
      assert.is_false(ok)
      assert.is_true(retry.is_error(err))
      assert.equal(1, #err.history)
      assert.equal(sent(err.history), h.hits(retry, key))
      local stats = client:stats()
      assert.same({ 6, 10 + dropped_attempts },
        { stats.requests, stats.attempts })
    end)
  end)

  it("sends params, data and json", function()
    run(function()
      local client = retry.RetryClient{ base_url = h.url("") }
      local e = client:post("/echo", { params = { q = "a b" }, data = "raw" }):json()
      assert.equal("a b", e.query.q)
      assert.equal("raw", e.body)
      e = client:put("echo", { json = { x = 1 } }):json()
      assert.equal('{"x":1}', e.body)
      assert.equal("/echo", e.path)
    end)
  end)

  it("follows changes to client.retry_options.attempts", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 5 } }
      client.retry_options.attempts = 2
      local url, key = counted("/status/500")
      assert.equal(2, client:get(url).attempts)
      assert.equal(2, h.hits(retry, key))
    end)
  end)

  it("does not retry server errors when retry_all_server_errors is false", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{
        attempts = 5, retry_all_server_errors = false } }
      local url, key = counted("/status/500")
      assert.equal(1, client:get(url).attempts)
      assert.equal(1, h.hits(retry, key))
      url, key = counted("/status/502")
      client.retry_options.statuses = { 502 }
      assert.equal(5, client:get(url).attempts)
      assert.equal(5, h.hits(retry, key))
    end)
  end)

  it("ListRetry makes as many attempts as it has timeouts", function()
    run(function()
      local client = retry.RetryClient{
        retry_options = retry.ListRetry{ timeouts = { 0.001, 0.002, 0.001, 0.001 } } }
      local url, key = counted("/status/500")
      local r = client:get(url)
      assert.equal(4, r.attempts)
      assert.equal(4, h.hits(retry, key))
      assert.same({ 0.001, 0.002, 0.001 },
        { r.history[1].wait, r.history[2].wait, r.history[3].wait })
    end)
  end)

  it("retries only the listed methods", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{
        attempts = 3, methods = { "get" } } }
      local url, key = counted("/status/500")
      assert.equal(3, client:get(url).attempts)
      assert.equal(3, h.hits(retry, key))
      url, key = counted("/status/500")
      assert.equal(1, client:post(url).attempts)
      assert.equal(1, h.hits(retry, key))
    end)
  end)

  it("evaluate_response_callback can read the body as JSON", function()
    run(function()
      local calls = 0
      local client = retry.RetryClient{ retry_options = fast{ attempts = 5,
        evaluate_response_callback = function(resp)
          calls = calls + 1
          return (pcall(resp.json, resp))
        end } }
      local url, key = flaky(2, 200, "&bad_json=1")
      local r = client:get(url)
      assert.equal(200, r.status)
      assert.is_true(r:json().ok)
      assert.equal(3, calls)
      assert.equal(3, h.hits(retry, key))
    end)
  end)

  -- A GET of url whose first response `callback` sees (and rejects), in a
  -- task; returns the client and the task once the request waits in its
  -- 0.2 s backoff before the second and last attempt.
  local function in_backoff(url, callback)
    local judged = false
    local client = retry.RetryClient{ retry_options = retry.ListRetry{
      timeouts = { 0.2 }, attempts = 2,
      evaluate_response_callback = function(resp)
        callback(resp)
        -- From here the request goes into its wait, yielding nowhere
        -- before it.
        judged = true
        return false
      end } }
    local t = retry.spawn(function() return client:get(url) end)
    while not judged and not t.done do retry.sleep(0.002) end
    return client, t
  end

  it("a request waiting in backoff holds no earlier response", function()
    run(function()
      local seen = setmetatable({}, { __mode = "k" })
      local url, key = counted("/hello")
      local client <close>, t = in_backoff(url, function(resp)
        seen[resp] = true
      end)
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(seen))
      local r <close> = t:await()
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      assert.equal(2, h.hits(retry, key))
    end)
  end)

  it("says the retry loop closed a retried response a script kept", function()
    run(function()
      local kept
      local client <close>, t = in_backoff(counted("/hello"), function(resp)
        assert.equal("hello\n", resp:text()) -- readable here
        kept = resp
      end)
      expect.invalid("by the retry loop once it retried the response %(read "
        .. "a retried response's body in evaluate_response_callback",
        kept.text, kept)
      assert.equal(200, kept.status) -- what is not the body stays readable
      t:await():close()
    end)
  end)

  it("evaluate_response_callback may yield", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3,
        evaluate_response_callback = function(resp)
          retry.sleep(0.005)
          local check = retry.request("GET", h.url("/hello"))
          return check.status == 200 and resp:json().ok
        end } }
      local url = flaky(1, 200, "&bad_json=0")
      local r = client:get(url)
      assert.equal(2, r.attempts)
    end)
  end)

  it("an error raised by the callback ends the request", function()
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 5,
        evaluate_response_callback = function() error("callback broke") end } }
      local url, key = counted("/hello")
      local ok, err = pcall(client.get, client, url)
      assert.is_false(ok)
      assert.matches("callback broke", err)
      assert.equal(1, h.hits(retry, key))
    end)
  end)

  it("requests() switches url, method and headers between attempts", function()
    run(function()
      local bad, bad_key = counted("/status/500")
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 } }
      local r = client:requests({
        retry.RequestParams{ method = "GET", url = bad },
        { method = "post", url = h.url("/echo"), headers = { ["X-Attempt"] = "2" },
          trace_request_ctx = { step = 2 }, kwargs = { data = "second" } },
      })
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      local e = r:json()
      assert.equal("POST", e.method)
      assert.equal("2", e.headers["x-attempt"])
      assert.equal("second", e.body)
      assert.equal(1, h.hits(retry, bad_key))
      expect.invalid("params", client.requests, client, {})
    end)
  end)

  it("ListRetry with a callback that always says false uses every attempt", function()
    run(function()
      local client = retry.RetryClient{ retry_options = retry.ListRetry{
        timeouts = { 0.001, 0.001, 0.001 },
        evaluate_response_callback = function() return false end } }
      local url, key = counted("/hello")
      local r = client:get(url)
      assert.equal(200, r.status)
      assert.equal(3, r.attempts)
      assert.equal(3, h.hits(retry, key))
    end)
  end)

  it("two concurrent requests sharing one FibonacciRetry wait the same", function()
    run(function()
      local shared = retry.FibonacciRetry{ attempts = 4, multiplier = 0.002,
        max_timeout = 1 }
      local client = retry.RetryClient{ retry_options = shared }
      local function waits()
        local r = client:get((counted("/status/500")))
        local w = {}
        for i = 1, 3 do w[i] = r.history[i].wait end
        return w
      end
      local a, b = retry.spawn(waits), retry.spawn(waits)
      local wa, wb = a:await(), b:await()
      assert.same({ 0.004, 0.006, 0.010 }, wa)
      assert.same(wa, wb)
    end)
  end)

  it("retries transport errors per exceptions", function()
    -- Counted at the server: every request there is an attempt, or the one
    -- re-send of a GET whose kept-alive connection died (history says so).
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 } }
      local function fails(opts)
        local url, key = counted("/close?n=100")
        local err = expect.raises("network", client.get, client, url, opts)
        assert.equal(#err.history, err.attempt)
        local resent = 0
        for _, record in ipairs(err.history) do
          if record.resent then resent = resent + 1 end
        end
        assert.equal(err.attempt + resent, h.hits(retry, key))
        return err.attempt
      end
      assert.equal(3, fails())
      assert.equal(3, fails(fast{ attempts = 3, exceptions = { "transport" } }))
      assert.equal(1, fails(fast{ attempts = 3, exceptions = {} }))
      assert.equal(1, fails(fast{ attempts = 3, exceptions = { "timeout" } }))
    end)
    -- recovers once the server answers (a new run: no kept-alive connection
    -- to re-send on)
    run(function()
      local client = retry.RetryClient{ retry_options = fast{ attempts = 3 } }
      local url, key = counted("/close?n=1")
      local r = client:get(url)
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      assert.equal(2, h.hits(retry, key))
      assert.equal("network", r.history[1].error.kind)
      assert.equal(200, r.history[2].status)
    end)
  end)

  it("logs each attempt and each retry decision with the wait", function()
    run(function()
      local lines = {}
      local logger = { debug = function(_, m) lines[#lines + 1] = m end,
        warning = function() end, exception = function() end }
      local client = retry.RetryClient{ logger = logger,
        retry_options = fast{ attempts = 3 } }
      client:get((flaky(1, 503)))
      assert.equal("Attempt 1 out of 3", lines[1])
      assert.matches("^Retrying after response code 503, waiting 0%.001 s$", lines[2])
      assert.equal("Attempt 2 out of 3", lines[3])
      assert.equal(3, #lines)
    end)
  end)

  it("sleeps what the strategy says between attempts", function()
    run(function()
      local client = retry.RetryClient{ retry_options = retry.ListRetry{ 0.05, 0.1 } }
      local t0 = retry.now()
      local r = client:get((counted("/status/500")))
      assert.equal(2, r.attempts)
      assert.is_true(retry.now() - t0 >= 0.05)
      assert.is_true(r.elapsed >= 0.05)
    end)
  end)

  it("uses a custom strategy written in Lua", function()
    run(function()
      local seen = {}
      local custom = retry.RetryOptionsBase{ attempts = 3,
        get_timeout = function(self, attempt, response)
          seen[#seen + 1] = { attempt, response and response.status }
          return 0.001 * attempt
        end }
      local r = retry.RetryClient{ retry_options = custom }:get((counted("/status/500")))
      assert.equal(3, r.attempts)
      assert.same({ { 1, 500 }, { 2, 500 } }, seen)
    end)
  end)

  it("names a custom strategy's wait that is not a finite number >= 0", function()
    run(function()
      for _, bad in ipairs({ -1, 0 / 0, math.huge, "1", false }) do
        local custom = retry.RetryOptionsBase{ attempts = 2,
          get_timeout = function() return bad end }
        local client = retry.RetryClient{ retry_options = custom }
        local url, key = counted("/status/500")
        expect.invalid("get_timeout%(1%) returned", client.get, client, url)
        assert.equal(1, h.hits(retry, key))
      end
    end)
  end)

  it("names a live option set to a bad value, before anything is sent", function()
    run(function()
      local url, key = counted("/status/500")
      for _, bad in ipairs({ 5, true, retry.ExponentialRetry, "x" }) do
        local client = retry.RetryClient()
        client.retry_options = bad
        expect.invalid("retry_options must be retry options", client.get,
          client, url)
      end
      for field, bad in pairs({ start_timeout = -1, factor = "x",
        max_timeout = 0 / 0, attempts = "x" }) do
        local client = retry.RetryClient{ retry_options = fast() }
        client.retry_options[field] = bad
        expect.invalid("field '" .. field .. "'", client.get, client, url)
      end
      local random = retry.RetryClient{ retry_options = retry.RandomRetry() }
      random.retry_options.min_timeout = math.huge
      expect.invalid("min_timeout", random.get, random, url)
      assert.equal(0, h.hits(retry, key))
    end)
  end)

  it("refuses waits that could never end, at construction", function()
    for _, o in ipairs({ { retry.ExponentialRetry, "start_timeout" },
      { retry.RandomRetry, "min_timeout" }, { retry.FibonacciRetry, "multiplier" },
      { retry.JitterRetry, "random_interval_size" },
      { retry.RandomRetry, "max_timeout" }, { retry.JitterRetry, "factor" } }) do
      expect.invalid("field '" .. o[2] .. "' must be a finite number >= 0",
        o[1], { [o[2]] = math.huge })
    end
    assert.equal(math.huge, retry.ExponentialRetry{ max_timeout = math.huge }.max_timeout)
  end)

  it("names a client field set to a bad value, before anything is sent", function()
    run(function()
      local url, key = counted("/hello")
      for field, bad in pairs({ headers = 5, trace_configs = "x", base_url = 5,
        raise_for_status = "yes", limit = "x", limit_per_host = -1, logger = 5,
        timeout = "x", max_redirects = -1, verify_tls = "no" }) do
        local client = retry.RetryClient()
        client[field] = bad
        expect.invalid(field, client.get, client, url)
      end
      local hooked = retry.RetryClient()
      hooked.trace_configs = { { on_request_start = 5 } }
      expect.invalid("on_request_start must be a function", hooked.get, hooked, url)
      expect.invalid("trace_configs%[1%]%.on_request_start must be a function, "
        .. "got 5", retry.RetryClient,
        { trace_configs = { { on_request_start = 5 } } })
      expect.invalid("trace_configs%[1%]%.on_request_begin is not a hook: the "
        .. "hooks are on_request_start", retry.RetryClient,
        { trace_configs = { { on_request_begin = print } } })
      -- A relative url is joined to base_url: a bad one is named first.
      local based = retry.RetryClient()
      based.base_url = 7
      expect.invalid("base_url must be a string", based.get, based, "/hello")
      -- Named as base_url, not as the url joined to it.
      for _, bad in ipairs({ "notaurl", "http://x y", "ftp://host" }) do
        based.base_url = bad
        expect.invalid("^RetryClient: base_url: url must", based.get, based,
          "/hello")
      end
      hooked.trace_configs = { 5 }
      expect.invalid("trace_configs%[1%] must be a table", hooked.get, hooked, url)
      local logged = retry.RetryClient{ logger = { debug = function() end } }
      logged.logger.debug = 5
      expect.invalid("logger.debug must be a function", logged.get, logged, url)
      assert.equal(0, h.hits(retry, key))
      -- and a good change takes effect
      local client = retry.RetryClient{ limit = 1 }
      client.limit = 3
      local slow, slow_key = counted("/delay/100")
      local tasks = {}
      for i = 1, 6 do tasks[i] = retry.spawn(function() return client:get(slow) end) end
      retry.gather(tasks)
      assert.equal(3, h.counts(retry, slow_key).peak)
    end)
  end)

  it("after a request passed its checks, still names every later bad field", function()
    -- A request that passed the checks must not let a later change go
    -- unseen: each one is named by the next request.
    run(function()
      local url, key = counted("/hello")
      local changes = {
        { function(c) c.limit = "x" end, "limit" },
        { function(c) c.headers = 5 end, "headers" },
        { function(c) c.trace_configs = "x" end, "trace_configs" },
        { function(c) c.timeout = -1 end, "timeout" },
        { function(c) c.deadline = 0 end, "deadline" },
        { function(c) c.hedge.max = 0 end, "hedge" }, -- in place
        { function(c) c.budget = {} end, "budget" },
        { function(c) rawset(c, "headers", 5) end, "headers" },
      }
      for _, change in ipairs(changes) do
        local client <close> = retry.RetryClient{
          hedge = { delay = 1, max = 2 } }
        assert.equal(200, client:get(url).status)
        assert.equal(200, client:get(url).status) -- checks passed: cached
        change[1](client)
        expect.invalid(change[2], client.get, client, url)
      end
      assert.equal(2 * #changes, h.hits(retry, key))
    end)
  end)

  it("reads, iterates and prints as a plain table", function()
    local client <close> = retry.RetryClient{ limit = 7 }
    local fields = {}
    for k, v in pairs(client) do fields[k] = v end
    assert.equal(7, fields.limit)
    assert.equal(client.retry_options, fields.retry_options)
    assert.is_false(fields.closed)
    client.base_url = "http://example.test/"
    assert.equal("http://example.test/", client.base_url)
    assert.equal("retry.RetryClient", tostring(client))
    client:close()
    assert.equal("retry.RetryClient (closed)", tostring(client))
    expect.invalid("expected a RetryClient", client.get, {}, "http://x/")
    assert.equal(7, rawget(client, "limit"))
    assert.equal(getmetatable(client), getmetatable(retry.RetryClient()))
    -- A table given a client's metatable lacks its fields: named, no crash.
    local copy = setmetatable({}, getmetatable(client))
    expect.invalid("headers must be a table", copy.get, copy, "http://x/")
  end)

  it("stops retrying once the client is closed during the request", function()
    run(function()
      local url, key = counted("/status/503")
      local client
      client = retry.RetryClient{ retry_options = fast{ attempts = 5 },
        trace_configs = { { on_request_end = function() client:close() end } } }
      local ok, err = pcall(client.get, client, url)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "cancelled"))
      assert.matches("closed during the request", err.message)
      assert.equal(1, h.hits(retry, key))
    end)
  end)

  it("names attempts broken in the middle of a request, with a logger", function()
    run(function()
      local options = fast{ attempts = 3 }
      options.evaluate_response_callback = function()
        options.attempts = "x"
        return false
      end
      local client = retry.RetryClient{ retry_options = options,
        logger = { debug = function() end } }
      expect.invalid("attempts", client.get, client, h.url("/hello"))
    end)
  end)

  it("checks a ca_file changed after construction", function()
    run(function()
      local client = retry.RetryClient()
      client.ca_file = "/no/such.pem"
      expect.invalid("ca_file", client.get, client, h.url("/hello"))
    end)
  end)

  it("checks the logger's methods", function()
    expect.invalid("logger", retry.RetryClient,
      { logger = { debug = print, warning = 5 } })
    expect.invalid("logger", retry.RetryClient, { logger = { debug = 5 } })
  end)

  it("rejects unknown client and call options", function()
    expect.invalid("unknown option \"retry_option\"", retry.RetryClient,
      { retry_option = 1 })
    run(function()
      local client = retry.RetryClient()
      expect.invalid("unknown option \"tiemout\"", client.get, client,
        h.url("/hello"), { tiemout = 1 })
    end)
  end)
end)

-- A request whose policy reads the status alone and whose waits depend on
-- the attempt's number alone makes its attempts and backoff in C
-- (core.request, src/lua_run.h): the same outcomes, counted at the server,
-- in a fraction of the memory.
describe("RetryClient, a request retried in C", function()
  local function list(timeouts, attempts)
    return retry.ListRetry{ timeouts = timeouts, attempts = attempts }
  end

  -- A client with one connection slot, and a task holding it for 3 s.
  local function one_slot_held()
    local client = retry.RetryClient{ limit = 1,
      retry_options = list({ 0.01 }, 2) }
    local holder = retry.spawn(function()
      return client:get(h.url("/delay/3000"))
    end)
    retry.sleep(0.05)
    return client, holder
  end

  it("sends each attempt, and says so in its history and the stats", function()
    run(function()
      local url, key = flaky(2, 503)
      local client <close> = retry.RetryClient{
        retry_options = list({ 0.01, 0.02 }, 4) }
      local r <close> = client:get(url)
      assert.equal(200, r.status)
      assert.equal(3, r.attempts)
      assert.equal(3, h.hits(retry, key))
      local hist = r.history
      assert.equal(3, #hist)
      for i = 1, 2 do
        assert.equal(i, hist[i].attempt)
        assert.equal(503, hist[i].status)
        assert.equal("status", hist[i].reason)
        assert.is_true(hist[i].elapsed > 0)
      end
      assert.equal(0.01, hist[1].wait)
      assert.equal(0.02, hist[2].wait)
      assert.equal(200, hist[3].status)
      assert.is_nil(hist[3].reason)
      local s = client:stats()
      assert.same({ 1, 3, 2, 2 }, { s.requests, s.attempts, s.retries,
        s.retries_by_reason.status })
    end)
  end)

  it("holds a request in backoff in less than 700 bytes more than a task "
    .. "that only sleeps", function()
    local n = 300
    local function heap()
      collectgarbage("collect")
      collectgarbage("collect")
      return collectgarbage("count") * 1024
    end
    run(function()
      local url, key = counted("/status/503")
      local client <close> = retry.RetryClient{
        retry_options = list({ 30 }, 2) }
      local base = heap()
      local sleepers = {}
      for i = 1, n do
        sleepers[i] = retry.spawn(function() retry.sleep(30) end)
      end
      retry.sleep(0.05)
      local per_sleeper = (heap() - base) / n
      for i = 1, n do sleepers[i]:cancel() end
      retry.sleep(0.05)
      sleepers = nil
      base = heap()
      local tasks = {}
      for i = 1, n do
        tasks[i] = retry.spawn(function() return client:get(url) end)
      end
      local deadline = retry.now() + 10
      while h.hits(retry, key) < n and retry.now() < deadline do
        retry.sleep(0.02)
      end
      retry.sleep(0.05)
      local per_request = (heap() - base) / n
      assert.is_true(per_request - per_sleeper < 700,
        ("a request in backoff %.0f bytes, a sleeping task %.0f"):format(
          per_request, per_sleeper))
      -- Cancelled in backoff: no second attempt, nothing left in the
      -- client's operations.
      for i = 1, n do tasks[i]:cancel() end
      for i = 1, n do
        local ok, e = pcall(tasks[i].await, tasks[i])
        assert.is_false(ok)
        assert.is_true(retry.is_error(e, "cancelled"))
      end
      assert.equal(n, h.settled_hits(retry, key))
      assert.is_nil(next(client.ops))
    end)
  end)

  it("ends at once when the client closes during the backoff", function()
    run(function()
      local url, key = counted("/status/503")
      local client = retry.RetryClient{ retry_options = list({ 5 }, 3) }
      local t = retry.spawn(function() return client:get(url) end)
      while h.hits(retry, key) < 1 do retry.sleep(0.01) end
      retry.sleep(0.02)
      local t0 = retry.now()
      client:close()
      local ok, e = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(retry.is_error(e, "cancelled"))
      assert.matches("closed during the request", e.message)
      assert.equal(url, e.url)
      assert.is_true(retry.now() - t0 < 0.5)
      assert.equal(1, h.settled_hits(retry, key))
    end)
  end)

  it("gives its connection slot back when cancelled, in flight or queued",
    function()
    run(function()
      local client <close>, a = one_slot_held()
      local hello, key = counted("/hello")
      local b = retry.spawn(function() return client:get(hello) end)
      local c = retry.spawn(function() return client:get(hello) end)
      retry.sleep(0.05)
      b:cancel()
      a:cancel()
      local t0 = retry.now()
      local r <close> = c:await()
      assert.equal(200, r.status)
      assert.is_true(retry.now() - t0 < 1)
      assert.is_false(pcall(a.await, a))
      assert.is_false(pcall(b.await, b))
      assert.equal(1, h.settled_hits(retry, key))
      assert.is_true(client.slots:idle())
    end)
  end)

  it("sends nothing when the client closes after a slot came to it, before "
    .. "it ran", function()
    run(function()
      local client = retry.RetryClient{ limit = 1,
        retry_options = list({ 0.01 }, 2) }
      local url, key = counted("/hello")
      -- a's request gives its slot to b as it ends; a closes the client
      -- before b runs again.
      local a = retry.spawn(function()
        local r <close> = client:get(h.url("/delay/100"))
        client:close()
        return r.status
      end)
      retry.sleep(0.02)
      local b = retry.spawn(function() return client:get(url) end)
      assert.equal(200, a:await())
      local ok, e = pcall(b.await, b)
      assert.is_false(ok)
      assert.is_true(retry.is_error(e, "cancelled"))
      assert.matches("closed during the request", e.message)
      assert.equal(1, e.attempt)
      assert.equal(url, e.url)
      assert.equal(0, h.settled_hits(retry, key))
    end)
  end)

  it("reads the strategy's attempts and the client's settings at every "
    .. "attempt, as the Lua loop does", function()
    run(function()
      -- attempts lowered during the request: it stops there.
      local url, key = counted("/status/503")
      local options = list({ 0.2 }, 5)
      local client <close> = retry.RetryClient{ retry_options = options }
      local t = retry.spawn(function() return client:get(url) end)
      retry.sleep(0.1)
      options.attempts = 2
      local r <close> = t:await()
      assert.equal(2, r.attempts)
      assert.equal(2, h.settled_hits(retry, key))
      assert.same({ 2, 1 }, { client:stats().attempts, client:stats().retries })
      -- set to a bad value: the request says so.
      options.attempts = 5
      t = retry.spawn(function() return client:get(url) end)
      retry.sleep(0.1)
      options.attempts = 0
      expect.invalid("attempts", t.await, t)
      -- a per-host limit set during the backoff holds for the next attempts.
      local slow = h.url("/delay/200")
      local limited <close> = retry.RetryClient{ retry_options =
        retry.ListRetry{ timeouts = { 0.1 }, attempts = 2, statuses = { 200 } } }
      local a = retry.spawn(function() return limited:get(slow) end)
      local b = retry.spawn(function() return limited:get(slow) end)
      retry.sleep(0.25)
      limited.limit_per_host = 1
      local ra <close> = a:await()
      local rb <close> = b:await()
      local queued = (ra.history[2].queued or 0) + (rb.history[2].queued or 0)
      assert.is_true(queued > 0.1, "the second attempts ran one at a time")
    end)
  end)

  it("keeps an integral wait an integer in its history", function()
    run(function()
      local client <close> = retry.RetryClient{ retry_options = list({ 0 }, 2) }
      local r <close> = client:get(h.url("/status/503"))
      assert.equal(2, r.attempts)
      assert.equal("integer", math.type(r.history[1].wait))
    end)
  end)

  it("counts and names a request made where no task can wait", function()
    local client <close> = retry.RetryClient{ retry_options = list({ 0 }, 2) }
    local url = h.url("/hello")
    local ok, e = pcall(client.get, client, url)
    assert.is_false(ok)
    assert.is_true(retry.is_error(e, "invalid"))
    assert.matches("inside a task", e.message)
    assert.same({ "GET", url, 1 }, { e.method, e.url, e.attempt })
    assert.equal(1, client:stats().requests)
  end)

  it("names the request and attempt when the client closes while it waits "
    .. "for a slot", function()
    run(function()
      local client, a = one_slot_held()
      local url, key = counted("/hello")
      local b = retry.spawn(function() return client:get(url) end)
      retry.sleep(0.05)
      client:close()
      local ok, e = pcall(b.await, b)
      assert.is_false(ok)
      assert.is_true(retry.is_error(e, "cancelled"))
      assert.matches("waited for a connection slot", e.message)
      assert.equal(1, e.attempt)
      assert.equal(url, e.url)
      assert.equal("GET", e.method)
      assert.is_false(pcall(a.await, a))
      assert.equal(0, h.settled_hits(retry, key))
    end)
  end)
end)
