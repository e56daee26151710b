-- Tasks (contract section 1): run, spawn, await, cancel, gather, sleep, now.
local retry = require("retry")
local h = require("helper")
local expect = require("expect")

describe("retry.run", function()
  it("returns the main function's results and passes its arguments", function()
    local a, b, n = retry.run(function(x, y) return x + y, "two", nil end, 1, 2)
    assert.equal(3, a)
    assert.equal("two", b)
    assert.is_nil(n)
    assert.equal(4, select("#", retry.run(function() return 1, 2, nil, nil end)))
  end)

  it("raises the main task's error with its traceback", function()
    local ok, err = pcall(retry.run, function()
      retry.sleep(0)
      error("boom")
    end)
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.matches("stack traceback:", err)
  end)

  it("ends a task's traceback at the task's function, none of lretry's own", function()
    local function fails() local t = nil; return t.field end
    local ok, err = pcall(retry.run, function()
      local task = retry.spawn(function() retry.sleep(0); fails() end)
      return task:await()
    end)
    assert.is_false(ok)
    local tb = err:match("stack traceback:.*$")
    assert.matches("task_spec.lua:%d+: in [%a ]*'fails'", tb)
    assert.matches("task_spec.lua:%d+: in function <", tb)
    -- The last line is the task's function, not the C frame tasks start in.
    assert.matches("task_spec.lua:%d+: in function <[^\n]*>$", tb)
    assert.not_matches("retry/task.lua", tb)
    assert.not_matches("xpcall", tb)
    local _, e = pcall(retry.run, function()
      return retry.spawn(function()
        retry.request("GET", "http://127.0.0.1:1/")
      end):await()
    end)
    assert.matches("task_spec.lua:%d+: in function <[^\n]*>$", e.traceback)
    -- A function that cannot be called keeps the frame that tried.
    local _, bad = pcall(retry.run, function()
      return retry.spawn(setmetatable({}, { __call = 5 })):await()
    end)
    assert.matches("attempt to call", bad)
    assert.matches("stack traceback:\n\t%[C%]", bad)
  end)

  it("nested in a task, runs fn there and waits for the tasks it spawned", function()
    local log = {}
    local a, b = retry.run(function()
      local x, y = retry.run(function(p)
        retry.spawn(function() retry.sleep(0.03); log[#log + 1] = "child" end)
        retry.spawn(function()
          retry.spawn(function() retry.sleep(0.05); log[#log + 1] = "grandchild" end)
        end)
        return p, "inner"
      end, "arg")
      log[#log + 1] = "after"
      return x, y
    end)
    assert.equal("arg", a)
    assert.equal("inner", b)
    assert.same({ "child", "grandchild", "after" }, log)
    -- and the loop is usable afterwards
    assert.equal("again", retry.run(function() return "again" end))
  end)

  it("nested, raises its fn's error after cancelling the tasks fn spawned", function()
    local cleaned = false
    retry.run(function()
      local ok, err = pcall(retry.run, function()
        retry.spawn(function()
          local _ <close> = setmetatable({}, { __close = function() cleaned = true end })
          retry.sleep(30)
        end)
        retry.sleep(0)
        error("inner fails")
      end)
      assert.is_false(ok)
      assert.matches("inner fails", err)
      assert.is_true(cleaned)
    end)
  end)

  it("nested, raises the error of a task nobody awaited, once", function()
    local outer_ok = pcall(retry.run, function()
      local ok, err = pcall(retry.run, function()
        retry.spawn(function() error("lost child") end)
      end)
      assert.is_false(ok)
      assert.matches("lost child", err)
    end)
    assert.is_true(outer_ok)
  end)

  it("runs a script written for stock lua5.4 unchanged under lretry", function()
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write([[
      local retry = require("retry")
      print(retry.run(function()
        local t = retry.spawn(function() retry.sleep(0.01); return "spawned" end)
        return t:await(), retry.request("GET", arg[1] .. "/hello").status
      end))
    ]])
    f:close()
    local code, out, err = h.sh(h.lretry .. " " .. path .. " " .. h.url(""))
    os.remove(path)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("spawned\t200\n", out)
  end)

  it("waits for every spawned task before returning", function()
    local finished = {}
    retry.run(function()
      for i = 1, 3 do
        retry.spawn(function()
          retry.sleep(0.01 * i)
          finished[#finished + 1] = i
        end)
      end
    end)
    assert.same({ 1, 2, 3 }, finished)
  end)

  it("raises the error of a task nobody awaited", function()
    local ok, err = pcall(retry.run, function()
      retry.spawn(function() error("lost?") end)
      retry.sleep(0.01)
      return "main done"
    end)
    assert.is_false(ok)
    assert.matches("lost%?", err)
  end)

  it("does not raise an awaited error a second time", function()
    local got = retry.run(function()
      local t = retry.spawn(function() error("seen") end)
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      return err
    end)
    assert.matches("seen", got)
  end)

  it("cancels the other tasks when the main task fails", function()
    local cleaned = false
    local t0 = retry.now()
    local ok = pcall(retry.run, function()
      retry.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() cleaned = true end })
        retry.sleep(30)
      end)
      retry.sleep(0.01)
      error("main fails")
    end)
    assert.is_false(ok)
    assert.is_true(cleaned)
    assert.is_true(retry.now() - t0 < 5)
  end)

  it("reports tasks that wait on each other forever", function()
    local ok, err = pcall(retry.run, function()
      local a, b
      a = retry.spawn(function() retry.sleep(0); return b:await() end)
      b = retry.spawn(function() retry.sleep(0); return a:await() end)
      a:await()
    end)
    assert.is_false(ok)
    assert.is_true(retry.is_error(err, "invalid"))
    assert.matches("deadlock", err.message)
  end)

  it("rejects a non-function", function()
    expect.invalid("^retry.run: expected a function, got 42$", retry.run, 42)
  end)
end)

describe("async calls outside a task", function()
  it("say to use retry.run", function()
    local function check(f)
      expect.invalid("retry.run", f)
    end
    check(function() retry.sleep(0.01) end)
    check(function() retry.spawn(function() end) end)
    check(function() retry.request("GET", h.url("/hello")) end)
  end)

  it("refuse a coroutine made inside a task", function()
    local ok, err = retry.run(function()
      local co = coroutine.create(function() retry.sleep(0) end)
      local _, e = coroutine.resume(co)
      return false, e
    end)
    assert.is_false(ok)
    assert.is_true(retry.is_error(err, "invalid"))
    assert.matches("coroutine made inside a task", err.message)
  end)
end)

describe("retry.sleep and retry.now", function()
  it("sleeps at least as long as asked", function()
    retry.run(function()
      for _, s in ipairs({ 0.001, 0.02, 0.05 }) do
        local t0 = retry.now()
        retry.sleep(s)
        local took = retry.now() - t0
        assert.is_true(took >= s, ("slept %.6f for %.3f"):format(took, s))
        assert.is_true(took < s + 0.5)
      end
    end)
  end)

  it("allows 0 and rejects negative, infinite, NaN or non-number seconds", function()
    retry.run(function()
      retry.sleep(0)
      for _, bad in ipairs({ -1, "x", 0 / 0, math.huge, -math.huge, {} }) do
        expect.invalid("^retry.sleep: seconds must be a finite number of seconds >= 0",
          retry.sleep, bad)
      end
    end)
  end)

  it("never ends early, however long: 1e12 s and 1e300 s still wait", function()
    retry.run(function()
      for _, s in ipairs({ 1e12, 1e300, 2^63 / 1e9, 1.8e10 }) do
        local t = retry.spawn(function() retry.sleep(s); return "woke" end)
        retry.sleep(0.05)
        assert.is_false(t.done, "sleep(" .. s .. ") ended early")
        assert.is_true(t:cancel())
        expect.raises("cancelled", t.await, t)
      end
    end)
  end)

  it("sleeping tasks that wake all the time do not hold up a request", function()
    retry.run(function()
      -- More timer wakes than one turn of the loop resumes: the tasks
      -- I/O wakes still get their turn (they once waited for minutes).
      local done = false
      local sleepers = {}
      for i = 1, 3000 do
        sleepers[i] = retry.spawn(function()
          local x = 0
          while not done do
            for _ = 1, 300 do x = x + 1 end -- a little work per wake
            retry.sleep(0.001)
          end
        end)
      end
      retry.sleep(0.05)
      local t0 = retry.now()
      for _ = 1, 5 do
        assert.equal(200, retry.request("GET", h.url("/hello")).status)
      end
      local took = retry.now() - t0
      done = true
      retry.gather(sleepers)
      assert.is_true(took < 3, ("5 requests took %.2f s"):format(took))
    end)
  end)

  it("lets sleeping tasks interleave by deadline", function()
    local order = {}
    retry.run(function()
      local ts = {}
      for _, d in ipairs({ 0.03, 0.01, 0.02 }) do
        ts[#ts + 1] = retry.spawn(function()
          retry.sleep(d)
          order[#order + 1] = d
        end)
      end
      retry.gather(ts)
    end)
    assert.same({ 0.01, 0.02, 0.03 }, order)
  end)

  it("wakes sleepers in deadline order, however close their deadlines", function()
    -- 40 deadlines 0.2 ms apart, made in reverse: whole-millisecond timers
    -- woke several in one turn, in the order they were made.
    local function run_once()
      local order, armed = {}, {}
      local late = false
      retry.run(function()
        local ts = {}
        -- Deadlines from one base, so they keep their order however far
        -- apart (up to 50 ms) the tasks get to arm them.
        local base = retry.now() + 0.05
        for i = 40, 1, -1 do
          ts[#ts + 1] = retry.spawn(function()
            local now = retry.now()
            armed[#armed + 1] = now
            local wait = base + i * 0.0002 - now
            if wait <= 0 then late = true end
            retry.sleep(math.max(0, wait))
            order[#order + 1] = i
          end)
        end
        -- Runs after the last of them has armed its deadline.
        ts[#ts + 1] = retry.spawn(function() armed[#armed + 1] = retry.now() end)
        retry.gather(ts)
      end)
      -- A sleep's deadline is taken in C a moment after the task read the
      -- clock: a collector step or the system holding the process there
      -- for 0.1 ms (seen: 1.1 ms) moves it past its neighbour's.
      for k = 2, #armed do
        if armed[k] - armed[k - 1] >= 0.0001 then late = true end
      end
      return order, late
    end
    local order, late
    for _ = 1, 5 do
      order, late = run_once()
      if not late then break end
    end
    assert.is_false(late, "five runs were held up while arming: no order to check")
    local want = {}
    for i = 1, 40 do want[i] = i end
    assert.same(want, order)
  end)

  it("cancelling sleepers leaves the others' deadlines as they were", function()
    local woke, early = {}, 0
    retry.run(function()
      local ts = {}
      for i = 1, 200 do
        ts[i] = retry.spawn(function()
          -- The ones cancelled below sleep far longer than any pause of a
          -- busy machine, so the cancel comes first; all share the heap.
          local asked = i % 2 == 0 and 30 + i or 0.02 + (i % 17) * 0.001
          local t0 = retry.now()
          retry.sleep(asked)
          if retry.now() - t0 < asked then early = early + 1 end
          woke[#woke + 1] = i
        end)
      end
      retry.sleep(0)
      for i = 2, 200, 2 do ts[i]:cancel() end
      for i = 1, 200 do pcall(ts[i].await, ts[i]) end
    end)
    assert.equal(0, early)
    table.sort(woke)
    local odd = {}
    for i = 1, 200, 2 do odd[#odd + 1] = i end
    assert.same(odd, woke)
  end)

  it("sleep(0) lets every task ready now run first", function()
    -- A timer's task goes ahead of the ready ones; a wait of no time must
    -- not, or a task could never make way for those it spawned.
    local log = {}
    retry.run(function()
      for round = 1, 3 do
        retry.spawn(function() log[#log + 1] = "task " .. round end)
        retry.sleep(0)
        log[#log + 1] = "main " .. round
      end
    end)
    assert.same({ "task 1", "main 1", "task 2", "main 2", "task 3", "main 3" },
      log)
  end)
end)

describe("tasks", function()
  it("start in spawn order, after the spawner yields", function()
    local log = {}
    retry.run(function()
      for i = 1, 3 do retry.spawn(function() log[#log + 1] = i end) end
      log[#log + 1] = "main"
      retry.sleep(0)
    end)
    assert.same({ "main", 1, 2, 3 }, log)
  end)

  it("await returns every result, and done tells when it ended", function()
    retry.run(function()
      local t = retry.spawn(function(a) retry.sleep(0.01); return a, a * 2 end, 5)
      assert.is_false(t.done)
      local x, y = t:await()
      assert.equal(5, x)
      assert.equal(10, y)
      assert.is_true(t.done)
      -- awaiting again gives the same results at once
      assert.equal(5, (t:await()))
    end)
  end)

  it("a finished task a script keeps holds its results, not its coroutine", function()
    local threads = setmetatable({}, { __mode = "k" })
    retry.run(function()
      local t = retry.spawn(function()
        threads[coroutine.running()] = true
        retry.sleep(0.001)
        return "kept"
      end)
      assert.equal("kept", t:await())
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(threads))
      assert.equal("kept", t:await())
    end)
  end)

  it("await re-raises the task's error object", function()
    retry.run(function()
      local t = retry.spawn(function()
        retry.request("GET", "http://127.0.0.1:1/")
      end)
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "connect"))
      assert.is_string(err.traceback)
    end)
  end)

  it("a task cannot await itself", function()
    retry.run(function()
      local me
      me = retry.spawn(function()
        expect.invalid("itself", function() return me:await() end)
      end)
      me:await()
    end)
  end)

  it("a script resuming a task's coroutine itself changes nothing", function()
    retry.run(function()
      local threads = {}
      local req = retry.spawn(function()
        threads[1] = coroutine.running()
        return retry.request("GET", h.url("/delay/200")).status
      end)
      local sleeper = retry.spawn(function()
        threads[2] = coroutine.running()
        local t0 = retry.now()
        retry.sleep(0.2)
        return retry.now() - t0
      end)
      local other = retry.spawn(function() retry.sleep(0.1); return 1 end)
      local waiter = retry.spawn(function()
        threads[3] = coroutine.running()
        return other:await() + 1
      end)
      retry.sleep(0.02)
      for _, th in ipairs(threads) do
        local ok, extra = coroutine.resume(th, "junk", 42)
        assert.is_true(ok)
        assert.is_nil(extra)
      end
      assert.equal(200, req:await())
      assert.is_true(sleeper:await() >= 0.2)
      assert.equal(2, waiter:await())
    end)
  end)

  it("a task whose plain yield a script resumed to its end still ends once", function()
    local got = retry.run(function()
      local th
      local t = retry.spawn(function()
        th = coroutine.running()
        coroutine.yield()
        return "finished"
      end)
      retry.spawn(function() coroutine.resume(th) end):await()
      return t:await()
    end)
    assert.equal("finished", got)
  end)

  it("refuses to wait where the task cannot yield, starting nothing", function()
    retry.run(function()
      local key = h.key("noyield")
      local url = h.url("/delay/300?key=" .. key)
      local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b)
        retry.request("GET", url)
        return a < b
      end)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "invalid"))
      assert.matches("cannot wait", err.message)
      expect.invalid("cannot wait", string.gsub, "x", "x", function()
        retry.sleep(1)
      end)
      -- nothing was left running: a later sleep lasts its whole time
      local t0 = retry.now()
      retry.sleep(0.4)
      assert.is_true(retry.now() - t0 >= 0.4)
      assert.equal(0, h.hits(retry, key))
    end)
  end)

  it("a slow host name lookup blocks neither a timeout, a cancel nor other tasks", function()
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write([[
      local retry = require("retry")
      local url = arg[1]
      local ticks, stop = 0, false
      local ticker = retry.spawn(function()
        while not stop do retry.sleep(0.01); ticks = ticks + 1 end
      end)
      local t0 = retry.now()
      local ok, e = pcall(retry.request, "GET", url, { timeout = 0.3 })
      local timed_out = retry.now() - t0
      local t = retry.spawn(function() return retry.request("GET", url) end)
      retry.sleep(0.1)
      local c0 = retry.now()
      t:cancel()
      local cancelled = retry.now() - c0
      stop = true
      ticker:await()
      print(e.kind, timed_out < 1, cancelled < 0.1, ticks >= 30)
      -- let the resolver threads end before the process does
      retry.sleep(2.2)
    ]])
    f:close()
    local url = h.url("/hello"):gsub("127%.0%.0%.1", "slow.test")
    local code, out, err = h.sh("LD_PRELOAD=" .. h.root .. "/build/tests/c/slowdns.so"
      .. " ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0"
      .. " SLOWDNS_SECONDS=2 " .. h.lretry .. " " .. path .. " " .. url)
    os.remove(path)
    assert.equal(0, code, err)
    assert.equal("timeout\ttrue\ttrue\ttrue\n", out)
  end)

  it("the errors of several tasks nobody awaited all reach the caller", function()
    local ok, err = pcall(retry.run, function()
      for i = 1, 3 do
        retry.spawn(function() error(retry.errors.new("network", "task " .. i)) end)
      end
    end)
    assert.is_false(ok)
    assert.equal("task 1", err.message)
    assert.equal(2, #err.also_failed)
    assert.equal("task 3", err.also_failed[2].message)
    ok, err = pcall(retry.run, function()
      retry.spawn(function() error("first") end)
      retry.spawn(function() error("second") end)
    end)
    assert.is_false(ok)
    assert.matches("first", err)
    assert.matches("1 more task failed too:\n  [^\n]*second", err)
    -- Strings: every other one is named, up to ten, then counted.
    ok, err = pcall(retry.run, function()
      for i = 1, 13 do retry.spawn(function() error("boom" .. i, 0) end) end
    end)
    assert.is_false(ok)
    assert.matches("^boom1\n", err) -- and its traceback
    assert.matches("\n%(12 more tasks failed too:\n  boom2\n  boom3\n", err)
    assert.matches("\n  boom11\n  and 2 more%)$", err)
    assert.is_nil(err:find("boom12", 1, true))
  end)

  it("names a task's coroutine closed from outside", function()
    local ok, err = pcall(retry.run, function()
      local th
      retry.spawn(function() th = coroutine.running(); retry.sleep(0.05) end)
      retry.sleep(0.01)
      coroutine.close(th)
    end)
    assert.is_false(ok)
    assert.is_true(retry.is_error(err, "invalid"))
    assert.matches("coroutine.close", err.message)
  end)

  it("names a closed coroutine, not a deadlock, when a task awaits it",
    function()
    local ok, err = pcall(retry.run, function()
      local th
      local t = retry.spawn(function()
        th = coroutine.running()
        retry.sleep(0.05)
      end)
      retry.sleep(0) -- the task runs, and sleeps
      coroutine.close(th)
      t:await() -- never ends: its task cannot
    end)
    assert.is_false(ok)
    assert.is_true(retry.is_error(err, "invalid"))
    assert.matches("coroutine.close", err.message)
  end)

  it("refuses to run in a finalizer called after its own, without a crash",
    function()
    -- Stock lua5.4 closes a state in the reverse order objects got their
    -- finalizers: one set before require("retry") runs after the module
    -- has closed its loop.
    local script = h.write_script([[
      -- Kept, so that it is finalized as the state closes, not before.
      KEPT = setmetatable({}, { __gc = function()
        local ok, err = pcall(require("retry").run, function() end)
        io.write("in a finalizer: ", tostring(ok), ", ", tostring(err), "\n")
        io.write("handles: ", require("retry.core").counts().handles, "\n")
      end })
      local retry = require("retry")
      retry.run(function() retry.sleep(0.001) end)
    ]])
    local code, out, err = h.sh("LUA_PATH=" .. h.quote(package.path)
      .. " LUA_CPATH=" .. h.quote(package.cpath) .. " lua5.4 " .. script)
    os.remove(script)
    assert.equal(0, code, err)
    assert.matches("in a finalizer: false, .*closing", out)
    assert.matches("handles: 0", out)
  end)

  it("takes hundreds of arguments for spawn and wake", function()
    retry.run(function()
      local args = {}
      for i = 1, 300 do args[i] = i end
      local t = retry.spawn(function(...) return select("#", ...) end,
        table.unpack(args))
      assert.equal(300, t:await())
    end)
  end)

  it("a plain coroutine.yield lets other tasks run", function()
    local log = {}
    retry.run(function()
      local t = retry.spawn(function() log[#log + 1] = "other" end)
      coroutine.yield()
      log[#log + 1] = "main"
      t:await()
    end)
    assert.same({ "other", "main" }, log)
  end)
end)

describe("task:cancel", function()
  it("stops a sleeping task with a cancelled error", function()
    retry.run(function()
      local t = retry.spawn(function() retry.sleep(30) end)
      retry.sleep(0.01)
      local t0 = retry.now()
      assert.is_true(t:cancel())
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "cancelled"))
      assert.is_true(retry.now() - t0 < 1)
      assert.is_true(t.done)
      assert.is_false(t:cancel())
    end)
  end)

  it("removes a task's transfer from the loop mid-flight", function()
    local t0 = retry.now()
    retry.run(function()
      local t = retry.spawn(function()
        return retry.request("GET", h.url("/delay/3000"))
      end)
      retry.sleep(0.05)
      t:cancel()
      expect.raises("cancelled", t.await, t)
    end)
    -- retry.run returned without waiting for the 3 s response
    assert.is_true(retry.now() - t0 < 2)
  end)

  it("before the task starts: it never runs", function()
    local ran = false
    retry.run(function()
      local t = retry.spawn(function() ran = true end)
      t:cancel()
      expect.raises("cancelled", t.await, t)
    end)
    assert.is_false(ran)
  end)

  it("of itself: raised at its next wait", function()
    local after = false
    retry.run(function()
      local t
      t = retry.spawn(function()
        t:cancel()
        retry.sleep(0)
        after = true
      end)
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "cancelled"))
    end)
    assert.is_false(after)
  end)

  it("while awaiting another task", function()
    retry.run(function()
      local slow = retry.spawn(function() retry.sleep(0.2); return "slow" end)
      local waiter = retry.spawn(function() return slow:await() end)
      retry.sleep(0.01)
      waiter:cancel()
      expect.raises("cancelled", waiter.await, waiter)
      assert.equal("slow", slow:await())
    end)
  end)

  it("cancels again a task that caught the first cancel", function()
    retry.run(function()
      local caught, reached_end = 0, false
      local t = retry.spawn(function()
        local ok, err = pcall(retry.sleep, 30)
        if not ok and retry.is_error(err, "cancelled") then caught = caught + 1 end
        retry.sleep(30) -- the second cancel must end this one
        reached_end = true
      end)
      retry.sleep(0.01)
      local t0 = retry.now()
      assert.is_true(t:cancel())
      retry.sleep(0.01)
      assert.equal(1, caught)
      assert.is_false(t.done)
      assert.is_true(t:cancel())
      expect.raises("cancelled", t.await, t)
      assert.is_false(reached_end)
      assert.is_true(retry.now() - t0 < 1)
      assert.is_false(t:cancel())
    end)
  end)

  it("a task cancelled while running gets it at each next wait", function()
    retry.run(function()
      local seen = 0
      local t
      t = retry.spawn(function()
        for _ = 1, 2 do
          t:cancel()
          local ok, err = pcall(retry.sleep, 0)
          if not ok and retry.is_error(err, "cancelled") then seen = seen + 1 end
        end
      end)
      t:await()
      assert.equal(2, seen)
    end)
  end)

  it("is not an unobserved error", function()
    assert.equal("fine", retry.run(function()
      local t = retry.spawn(function() retry.sleep(10) end)
      retry.sleep(0)
      t:cancel()
      return "fine"
    end))
  end)
end)

describe("retry.gather", function()
  it("returns first results in order, from arguments or a list", function()
    retry.run(function()
      local function job(v, d)
        return retry.spawn(function() retry.sleep(d); return v end)
      end
      assert.same({ "a", "b", n = 2 }, retry.gather(job("a", 0.02), job("b", 0.01)))
      assert.same({ 1, 2, 3, n = 3 },
        retry.gather({ job(1, 0.01), job(2, 0), job(3, 0.005) }))
    end)
  end)

  it("raises the first error after all tasks have ended", function()
    local finished = false
    retry.run(function()
      local ok, err = pcall(retry.gather,
        retry.spawn(function() retry.sleep(0.01); error("first") end),
        retry.spawn(function() retry.sleep(0.05); finished = true end),
        retry.spawn(function() error("second") end))
      assert.is_false(ok)
      assert.matches("first", err)
      assert.is_true(finished)
    end)
  end)

  it("rejects what is not a task", function()
    retry.run(function()
      expect.invalid("argument 1 is not a Task", retry.gather, { 1 })
      expect.invalid("argument 2 is not a Task", retry.gather, retry.spawn(print), 5)
      expect.invalid("list of Tasks", retry.gather, { a = 1 })
      local a = retry.spawn(function() return "a" end)
      local b = retry.spawn(function() return "b" end)
      assert.same({ "a", "b", n = 2 }, retry.gather(table.pack(a, b)))
    end)
  end)
end)

describe("retry.core", function()
  local core = require("retry.core")

  it("refuses, with an error, every call that would crash", function()
    retry.run(function()
      expect.invalid("the loop is running", core.leave)
      expect.invalid("core.loop", core.loop)
      expect.invalid("nested", core.enter)
      expect.invalid("task handle", core.wake, 5)
      expect.invalid("task handle", core.cancel, {}, "x")
      expect.invalid("task handle", core.take_cancel, nil)
      expect.invalid("task handle", core.cancelled, "x")
      expect.invalid("function", core.spawn, 42)
      expect.invalid("string", core.park, 1)
      expect.invalid("request table", core.start, "GET")
      expect.invalid("method must be a string", core.start, {})
      expect.invalid("timeout must be", core.start,
        { method = "GET", url = h.url("/"), timeout = -1 })
      expect.invalid("max_redirects", core.start,
        { method = "GET", url = h.url("/"), max_redirects = 1.5 })
      expect.invalid("verify_tls", core.start,
        { method = "GET", url = h.url("/"), verify_tls = "no" })
      local handle = core.spawn(function() end)
      expect.invalid("the error to raise is missing", core.cancel, handle)
      -- a cancel raised by core.park leaves nothing for core.wake to wake
      local me = retry.current_task()
      core.cancel(me.handle, "stop")
      assert.is_false(pcall(core.park, "x"))
      local waker = retry.spawn(function() return core.wake(me.handle) end)
      local t0 = retry.now()
      retry.sleep(0.2)
      assert.is_true(retry.now() - t0 >= 0.2)
      assert.is_false(waker:await())
    end)
    -- Outside a run: nothing to leave, nothing to run, no task to park.
    core.leave()
    expect.invalid("core.loop", core.loop)
    expect.invalid("inside a task", core.park, "x")
    expect.invalid("inside a task", core.sleep, 1)
    expect.invalid("inside a task", core.spawn, print)
    -- and runs work afterwards
    assert.equal(200, retry.run(function()
      return retry.request("GET", h.url("/hello")).status
    end))
  end)
end)
