-- Operations (issue 7): transfers and timers a task starts, races and
-- cancels through retry.core, each giving its libcurl and libuv handles
-- back on every path. Counted at the server (requests it saw aborted) and
-- in the process (open fds, libuv handles, transfers in flight).
local retry = require("retry")
local core = require("retry.core")
local h = require("helper")
local expect = require("expect")

local function counted(path) return h.counted(path, "op") end

local function get(url)
  return { method = "GET", url = url, timeout = 30 }
end

local pid = io.open("/proc/self/stat"):read("l"):match("^(%d+)")

local function open_fds()
  local n = 0
  local p = io.popen("ls /proc/" .. pid .. "/fd")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- What the process holds once closing handles are gone.
local function holdings()
  retry.sleep(0.05)
  local c = core.counts()
  return { fds = open_fds(), handles = c.handles, transfers = c.transfers }
end

-- Nothing more open than before (fewer fds is fine: idle connections may
-- have been closed meanwhile).
local function released(before)
  local now = holdings()
  assert.is_true(now.fds <= before.fds, ("fds %d > %d"):format(now.fds,
    before.fds))
  assert.equal(before.handles, now.handles)
  assert.equal(0, now.transfers)
end

-- Two transfers at once first, so the pool and the connection cache are
-- as large before a test as during it.
local function warm_up()
  local a = core.start(get(h.url("/hello")))
  local b = core.start(get(h.url("/hello")))
  core.wait(nil, a); core.wait(nil, b)
  core.result(a):close(); core.result(b):close()
  return holdings()
end

local function aborted_soon(key)
  for _ = 1, 50 do
    if h.counts(retry, key).aborted > 0 then return true end
    retry.sleep(0.02)
  end
  return false
end

describe("operations", function()
  it("a transfer and a timer race: the timer wins, the transfer is released", function()
    retry.run(function()
      local before = warm_up()
      local url, key = counted("/delay/3000")
      local xfer = core.start(get(url))
      local timer = core.timer(0.05)
      local t0 = retry.now()
      assert.equal(2, core.wait(nil, xfer, timer))
      assert.is_true(retry.now() - t0 < 1)
      assert.is_true(core.result(timer))
      assert.is_true(core.cancel_op(xfer))
      assert.is_false(core.cancel_op(xfer))
      local r, kind = core.result(xfer)
      assert.is_nil(r)
      assert.equal("cancelled", kind)
      assert.is_true(aborted_soon(key), "the server saw the connection go")
      released(before)
    end)
  end)

  it("a transfer and a timer race: the transfer wins, the timer is released", function()
    retry.run(function()
      local before = warm_up()
      local xfer = core.start(get(h.url("/delay/20")))
      local timer = core.timer(30)
      assert.equal(1, core.wait(nil, timer, xfer) == 2 and 1 or 0)
      local r = core.result(xfer)
      assert.equal(200, r.status)
      r:close()
      assert.is_true(core.cancel_op(timer))
      released(before)
    end)
  end)

  it("cancels one of two transfers; the other goes on", function()
    retry.run(function()
      local before = warm_up()
      local slow, slow_key = counted("/delay/3000")
      local quick, quick_key = counted("/delay/100")
      local a = core.start(get(slow))
      local b = core.start(get(quick))
      retry.sleep(0.02)
      core.cancel_op(a)
      assert.equal(1, core.wait(nil, a, b))
      assert.equal(1, core.wait(nil, b))
      local r = core.result(b)
      assert.equal(200, r.status)
      r:close()
      assert.is_true(aborted_soon(slow_key))
      assert.equal(0, h.counts(retry, quick_key).aborted)
      released(before)
    end)
  end)

  it("a time limit on a wait returns nil and leaves the operations running", function()
    retry.run(function()
      local xfer = core.start(get(h.url("/delay/200")))
      local t0 = retry.now()
      assert.is_nil(core.wait(0.05, xfer))
      local waited = retry.now() - t0
      assert.is_true(waited >= 0.05 and waited < 0.18, tostring(waited))
      assert.equal(1, core.wait(nil, xfer))
      local r = core.result(xfer)
      assert.equal(200, r.status)
      r:close()
    end)
  end)

  it("a cancelled task stops the transfers it started, waited on or not", function()
    retry.run(function()
      local before = warm_up()
      local url, key = counted("/delay/3000")
      local t = retry.spawn(function()
        core.start(get(url)) -- started, never waited on
        retry.sleep(10)
      end)
      retry.sleep(0.05)
      t:cancel()
      assert.is_true(expect.raises("cancelled", t.await, t) ~= nil)
      assert.is_true(aborted_soon(key))
      released(before)
    end)
  end)

  it("an ending task releases what it left running", function()
    retry.run(function()
      local before = warm_up()
      local url, key = counted("/delay/3000")
      local op
      retry.spawn(function()
        op = core.start(get(url))
        retry.sleep(0.05) -- the request reaches the server
      end):await()
      assert.is_true(aborted_soon(key))
      local r, kind = core.result(op)
      assert.is_nil(r)
      assert.equal("cancelled", kind)
      released(before)
    end)
  end)

  it("refuses what cannot work", function()
    retry.run(function()
      local xfer = core.start(get(h.url("/delay/100")))
      expect.invalid("has not finished", core.result, xfer)
      expect.invalid("expected an operation", core.wait, nil, {})
      -- Nor does its __gc, which a script can reach, touch anything else.
      local gc = getmetatable(xfer).__gc
      for _, other in ipairs({ io.stdout, core.histogram(), false }) do
        assert.is_true(pcall(gc, other or nil))
      end
      -- Userdata of other kinds, lretry's own or not, are not operations.
      expect.invalid("expected an operation, got retry.Histogram", core.wait,
        nil, core.histogram())
      expect.invalid("expected an operation, got FILE%*", core.result,
        io.stdout)
      expect.invalid("nothing to wait for", core.wait, nil)
      expect.invalid("seconds", core.wait, -1, xfer)
      expect.invalid("finite number", core.timer, math.huge)
      local other = retry.spawn(function()
        return pcall(core.wait, nil, xfer)
      end)
      local ok, err = other:await()
      assert.is_false(ok)
      assert.matches("task that started it", err.message)
      core.wait(nil, xfer)
      core.result(xfer):close()
      expect.invalid("already taken", core.result, xfer)
      expect.invalid("core.conclude: expected a Response, got FILE%*",
        core.conclude, io.stdout, 1, {}, 0)
      expect.invalid("expected a Response, got retry.Histogram",
        core.conclude, core.histogram(), 1, {}, 0)
    end)
  end)

  it("a transfer's result carries its timings", function()
    retry.run(function()
      local xfer = core.start(get(h.url("/delay/100")))
      core.wait(nil, xfer)
      local r = core.result(xfer)
      local t = r.timings
      assert.is_true(t.connect >= 0 and t.first_byte >= t.connect)
      assert.is_true(t.first_byte >= 0.09, tostring(t.first_byte))
      assert.is_true(t.total >= t.first_byte)
      assert.equal(0, r.retry_after)
      r:close()
    end)
  end)

  it("client:close() cancels the client's requests; their tasks go on", function()
    retry.run(function()
      local client = retry.RetryClient()
      local url, key = counted("/delay/3000")
      local t = retry.spawn(function()
        local ok, err = pcall(client.get, client, url)
        assert.is_false(ok)
        local r = retry.request("GET", h.url("/hello"))
        r:close()
        return err, "went on"
      end)
      retry.sleep(0.05)
      client:close()
      local err, after = t:await()
      assert.is_true(retry.is_error(err, "cancelled"), tostring(err))
      assert.matches("closed", err.message)
      assert.equal("went on", after)
      assert.is_true(aborted_soon(key))
    end)
  end)

  it("client:close() cuts a backoff wait short", function()
    retry.run(function()
      local client = retry.RetryClient{
        retry_options = retry.ListRetry{ timeouts = { 5 }, attempts = 2 } }
      local url, key = counted("/status/503")
      local t = retry.spawn(function() return pcall(client.get, client, url) end)
      retry.sleep(0.1)
      local t0 = retry.now()
      client:close()
      local ok, err = t:await()
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "cancelled"))
      assert.is_true(retry.now() - t0 < 0.5)
      assert.equal(1, h.hits(retry, key))
    end)
  end)
end)
