-- Loads on several OS threads (issue 9, point 3): `lretry load --threads N`
-- and `retry.load{threads = N}` in a script run N loops, each in a thread
-- with a Lua state of its own, and merge their results exactly. Every
-- request is counted at the server as well.
local retry = require("retry")
local h = require("helper")
local cjson = require("cjson")

local q, lretry, slurp = h.quote, h.run_lretry, h.slurp
local write_script = h.write_script

describe("lretry load --threads", function()
  it("sends exactly -n requests in all, at most -c at once", function()
    local url, key = h.counted("/delay/2", "threads")
    local path = os.tmpname()
    local code, out, err = lretry("load " .. q(url) .. " --threads 2 -n 1000 "
      .. "-c 8 --expect 200 --json " .. path)
    assert.equal(0, code, err)
    assert.is_truthy(out:find("requests%s+1000"), out)
    assert.is_truthy(out:find("closed model, 8 concurrent", 1, true), out)
    assert.is_truthy(out:find("100.00%   1000 passed, 0 failed", 1, true), out)
    local j = cjson.decode(slurp(path))
    os.remove(path)
    assert.equal(1000, j.requests)
    assert.equal(1000, j.responses)
    assert.equal(1000, j.attempts_sent)
    assert.equal(1000, j.histogram.count)
    assert.equal(1000, j.attempt_histogram.count)
    assert.equal(2, j.threads)
    assert.equal(8, j.concurrency)
    assert.is_nil(j.merged)
    local sum = 0
    for _, e in ipairs(j.timeline) do sum = sum + e.requests end
    assert.equal(1000, sum)
    retry.run(function()
      local c = h.counts(retry, key)
      assert.equal(1000, c.hits)
      assert.is_true(c.peak <= 8, "peak " .. c.peak)
    end)
  end)

  it("splits an odd count and concurrency exactly", function()
    local url, key = h.counted("/hello", "threads")
    local code, out, err = lretry("load " .. q(url) .. " -t 3 -n 1001 -c 7 "
      .. "--json -")
    assert.equal(0, code, err)
    local j = cjson.decode(out)
    assert.equal(1001, j.requests)
    assert.equal(7, j.concurrency)
    assert.equal(3, j.threads)
    retry.run(function() assert.equal(1001, h.hits(retry, key)) end)
  end)

  it("runs every thread for the same duration", function()
    local url, key = h.counted("/delay/5", "threads")
    local path = os.tmpname()
    local t0 = retry.now()
    local code, _, err = lretry("load " .. q(url) .. " --threads 2 -d 1s "
      .. "-c 4 --json " .. path)
    local took = retry.now() - t0
    assert.equal(0, code, err)
    assert.is_true(took >= 1 and took < 1.8, tostring(took))
    local j = cjson.decode(slurp(path))
    os.remove(path)
    assert.is_true(j.duration >= 1 and j.duration < 1.3, tostring(j.duration))
    assert.is_true(j.requests >= 100, tostring(j.requests))
    assert.equal(j.requests, j.responses + j.errors)
    retry.run(function() assert.equal(j.requests, h.hits(retry, key)) end)
  end)

  it("splits the rate of an open model", function()
    local url, key = h.counted("/hello", "threads")
    local code, out, err = lretry("load " .. q(url) .. " -t 2 -r 200 -d 1s")
    assert.equal(0, code, err)
    assert.is_truthy(out:find("open model, 200/s", 1, true), out)
    local n = tonumber(out:match("requests%s+(%d+)"))
    assert.is_true(n >= 196 and n <= 200, out)
    retry.run(function() assert.equal(n, h.hits(retry, key)) end)
    -- The threads start the whole schedule's requests in turn: as many
    -- as one thread would, however the rate divides.
    url, key = h.counted("/hello", "threads")
    code, out, err = lretry("load " .. q(url) .. " -t 4 -r 150 -d 1s "
      .. "--json -")
    assert.equal(0, code, err)
    local j = cjson.decode(out)
    assert.equal(150, j.requests + j.dropped)
    assert.equal(150, j.rate)
    retry.run(function() assert.equal(j.requests, h.hits(retry, key)) end)
  end)

  it("refuses more threads than the concurrency", function()
    local code, out, err = lretry("load http://127.0.0.1:1/ -t 3 -c 2")
    assert.equal(2, code)
    assert.equal("", out)
    assert.is_truthy(err:find("--threads 3 is more than the concurrency (-c 2)",
      1, true), err)
    code, _, err = lretry("load http://127.0.0.1:1/ -t 11")
    assert.equal(2, code)
    assert.is_truthy(err:find("more than the concurrency (10)", 1, true), err)
    code, _, err = lretry("load http://127.0.0.1:1/ -t 0")
    assert.equal(2, code)
    assert.is_truthy(err:find("--threads must be an integer >= 1", 1, true),
      err)
    local help
    code, help = lretry("load --help")
    assert.equal(0, code)
    assert.is_truthy(help:find("-t, --threads N", 1, true), help)
  end)

  it("checks the thresholds once, on the merged figures", function()
    local url = h.url("/delay/20")
    local code, out = lretry("load " .. q(url) .. " -t 2 -n 20 -c 2 "
      .. "--threshold p50=5ms --threshold error_rate=0")
    assert.equal(2, code)
    assert.is_truthy(out:find("✗ p50", 1, true), out)
    assert.is_truthy(out:find("✓ error_rate", 1, true), out)
    local _, n = out:gsub("thresholds", "")
    assert.equal(1, n, out)
  end)

  it("writes a JSON that merges like any other", function()
    local a, b = os.tmpname(), os.tmpname()
    local code = lretry("load " .. q(h.url("/hello")) .. " -t 2 -n 300 -c 4 "
      .. "--quiet --json " .. a)
    assert.equal(0, code)
    code = lretry("load " .. q(h.url("/status/404")) .. " -n 100 -c 2 "
      .. "--quiet --json " .. b)
    assert.equal(0, code)
    local code2, out = lretry("merge " .. a .. " " .. b .. " --json -")
    assert.equal(0, code2, out)
    local m = cjson.decode(out)
    assert.equal(400, m.requests)
    assert.equal(300, m.by_status["200"])
    assert.equal(100, m.by_status["404"])
    assert.equal(400, m.histogram.count)
    assert.equal(2, m.merged)
    -- A merge of the one file gives its figures back.
    local _, one = lretry("merge " .. a .. " --json -")
    local ja, jm = cjson.decode(slurp(a)), cjson.decode(one)
    assert.same(ja.histogram, jm.histogram)
    assert.same(ja.latency, jm.latency)
    assert.equal(ja.requests, jm.requests)
    os.remove(a)
    os.remove(b)
  end)

  it("with --threads 1 runs as without it", function()
    local url, key = h.counted("/hello", "threads")
    local code, out, err = lretry("load " .. q(url) .. " -t 1 -n 200 -c 4 "
      .. "--json -")
    assert.equal(0, code, err)
    local j = cjson.decode(out)
    assert.equal(200, j.requests)
    assert.is_nil(j.threads)
    assert.is_truthy(err:find("requests%s+200"), err)
    retry.run(function() assert.equal(200, h.hits(retry, key)) end)
  end)

  it("stops every thread on Ctrl-C, prints the partial summary and exits 130",
    function()
      local url, key = h.counted("/delay/300", "threads-int")
      local path = os.tmpname()
      local t0 = retry.now()
      local code, out = h.sh("sh -c " .. q(h.lretry .. " load " .. q(url)
        .. " -c 8 -d 20s --threads 2 --json " .. path .. " & pid=$!; "
        .. "sleep 1; kill -INT $pid; wait $pid"))
      local took = retry.now() - t0
      assert.equal(130, code, out)
      assert.is_true(took < 3, tostring(took))
      assert.is_truthy(out:find("INTERRUPTED", 1, true), out)
      local j = cjson.decode(slurp(path))
      os.remove(path)
      assert.is_true(j.interrupted)
      assert.equal(j.requests, j.responses + j.errors)
      assert.equal(8, j.by_error.cancelled)
      assert.equal("cancelled by Ctrl-C", j.error_examples.cancelled)
      assert.equal(j.requests - 8, j.histogram.count)
      retry.run(function()
        assert.equal(j.attempts_sent, h.counts(retry, key).hits)
        local deadline = retry.now() + 2
        while h.counts(retry, key).aborted < 8 and retry.now() < deadline do
          retry.sleep(0.05)
        end
        assert.equal(8, h.counts(retry, key).aborted)
      end)
    end)

  it("counts the progress line's time from the threads' common start",
    function()
      -- 128 threads take a while to start; the line's clock must not. It
      -- is the run's clock (its JSON duration, from the common start to
      -- the end), which the last line drawn cannot pass: a clock counted
      -- from before the threads started would, by their start-up time.
      local path = os.tmpname()
      local code, out = h.sh("env -u LD_PRELOAD script -qec "
        .. q(h.lretry .. " load " .. q(h.url("/delay/10")) .. " -c 128 "
          .. "-t 128 -d 1 --json " .. path) .. " /dev/null")
      assert.equal(0, code, out)
      local ran = cjson.decode(slurp(path)).duration
      os.remove(path)
      local most, lines = 0, 0
      for elapsed in out:gmatch("\r\27%[K([%d.]+)s  %d+ done") do
        most, lines = math.max(most, tonumber(elapsed)), lines + 1
      end
      assert.is_true(lines >= 1, out)
      -- The line shows tenths (1.06 s may read 1.1), and may be drawn in
      -- the loop turn that sees the last thread end.
      assert.is_true(most <= ran + 0.15,
        ("the line read %g s of a run of %g s"):format(most, ran))
    end)

  it("draws one progress line with every thread's counts", function()
    local code, out = h.sh("env -u LD_PRELOAD script -qec "
      .. q(h.lretry .. " load " .. q(h.url("/delay/10")) .. " -c 8 -t 2 "
        .. "-n 400") .. " /dev/null")
    assert.equal(0, code, out)
    local totals = 0
    for done, total in out:gmatch("\r\27%[K[%d.]+s  (%d+)/(%d+) %(") do
      assert.equal("400", total)
      totals = totals + 1
      assert.is_true(tonumber(done) <= 400)
    end
    assert.is_true(totals >= 1, out)
    -- 8 in flight: both threads' requests are counted, not one's.
    assert.is_truthy(out:find("in flight 8", 1, true), out)
    assert.is_truthy(out:find("\r\27[Klretry load:", 1, true), out)
  end)
end)

describe("retry.load{threads = N} in a script", function()
  it("runs the script in every thread up to its load, and the rest once",
    function()
      local warm_url, warm_key = h.counted("/hello", "threads-warm")
      local url, key = h.counted("/hello", "threads-script")
      local script = write_script(([[
        local retry = require("retry")
        print("start " .. arg[1])
        local warm = retry.load{ url = %q, requests = 10, quiet = true }
        print("warm " .. warm.requests)
        local r = retry.load{ url = %q, requests = 500, concurrency = 4,
          threads = 2, quiet = true,
          request = function(client, i) return client:get(%q) end,
          check = function(response) return response.status == 200 end }
        print("load " .. r.requests .. " " .. r.checks .. " " .. r.threads)
      ]]):format(warm_url, url, url))
      local code, out, err = lretry(script .. " hello")
      os.remove(script)
      assert.equal(0, code, err)
      assert.equal("start hello\nwarm 10\nload 500 500 2\n", out)
      retry.run(function()
        assert.equal(10, h.hits(retry, warm_key))
        assert.equal(500, h.hits(retry, key))
      end)
    end)

  it("sends nothing after the load from a worker, even under pcall",
    function()
      local url, key = h.counted("/hello", "threads-pcall")
      local after_url, after_key = h.counted("/hello", "threads-after")
      local script = write_script(([[
        local retry = require("retry")
        local ok, r = pcall(retry.load, { url = %q, requests = 100,
          concurrency = 4, threads = 2, quiet = true })
        -- In a worker the load ends the script with an error that this
        -- pcall catches: what follows must not reach the server there.
        local sent = pcall(retry.request, "GET", %q)
        if ok then print("load " .. r.requests .. " after " .. tostring(sent)) end
      ]]):format(url, after_url))
      local code, out, err = lretry(script)
      os.remove(script)
      assert.equal(0, code, err)
      assert.equal("load 100 after true\n", out)
      retry.run(function()
        assert.equal(100, h.hits(retry, key))
        assert.equal(1, h.hits(retry, after_key))
      end)
    end)

  it("starts every thread's share together, however late one got ready",
    function()
      -- The second worker to reach the load sleeps 1.5 s first. Each
      -- thread's 1 s must still be the same second: both at the server
      -- at once (peak 2), and the duration and rate the run's own.
      local url, key = h.counted("/delay/100", "threads-start")
      local order = os.tmpname()
      local script = write_script(([[
        local retry = require("retry")
        local f = assert(io.open(%q, "a")); f:write("x\n"); f:close()
        local n = 0
        for _ in io.lines(%q) do n = n + 1 end
        if n == 3 then retry.sleep(1.5) end
        local r = retry.load{ url = %q, duration = 1, concurrency = 2,
          threads = 2, quiet = true }
        print(("%%d %%.3f %%.1f"):format(r.requests, r.duration, r.rps))
      ]]):format(order, order, url))
      local code, out, err = lretry(script)
      os.remove(script)
      os.remove(order)
      assert.equal(0, code, err)
      local requests, duration, rps = out:match("^(%d+) (%S+) (%S+)\n$")
      requests, duration, rps = tonumber(requests), tonumber(duration),
        tonumber(rps)
      assert.is_truthy(requests, out)
      assert.is_true(duration >= 1 and duration < 1.4, out)
      -- Two at a time, 100 ms each: some 20 in the second, not 10 in
      -- each of two seconds reported as one.
      assert.is_true(requests >= 14 and requests <= 24, out)
      assert.is_true(rps <= 24, out)
      retry.run(function()
        local c = h.counts(retry, key)
        assert.equal(requests, c.hits)
        assert.equal(2, c.peak)
      end)
    end)

  it("numbers the requests across the threads, each number once",
    function()
      local prefix = h.key("threads-i")
      local script = write_script(([[
        local retry = require("retry")
        local function request(client, i)
          return client:get(%q .. "?key=" .. %q .. "-" .. i)
        end
        retry.load{ requests = 60, concurrency = 4, threads = 2,
          quiet = true, request = request }
        retry.load{ requests = 40, rate = 400, threads = 2, quiet = true,
          request = function(client, i) return request(client, 100 + i) end }
      ]]):format(h.url("/hello"), prefix))
      local code, _, err = lretry(script)
      os.remove(script)
      assert.equal(0, code, err)
      retry.run(function()
        for i = 1, 60 do
          assert.equal(1, h.hits(retry, prefix .. "-" .. i), "request " .. i)
        end
        for i = 101, 140 do
          assert.equal(1, h.hits(retry, prefix .. "-" .. i), "request " .. i)
        end
        assert.equal(0, h.hits(retry, prefix .. "-61"))
        assert.equal(0, h.hits(retry, prefix .. "-141"))
      end)
    end)

  it("reports a thread's error and exits 1", function()
    local script = write_script(([[
      local retry = require("retry")
      local worker = require("retry.load").worker
      if worker and worker.index == 2 then error("no luck in thread 2") end
      retry.load{ url = %q, duration = 5, concurrency = 4, threads = 2 }
      print("not reached")
    ]]):format(h.url("/delay/50")))
    local t0 = retry.now()
    local code, out, err = lretry(script)
    os.remove(script)
    assert.equal(1, code, err)
    assert.is_true(retry.now() - t0 < 2)
    assert.equal("", out)
    assert.is_truthy(err:find("thread 2 of 2 failed: .*no luck in thread 2"),
      err)
  end)

  it("tells each reason once when many threads fail", function()
    -- Threads 2-4 and 6 fail alike, 5 another way: two lines, threads as
    -- ranges, not one line per thread.
    local script = write_script(([[
      local retry = require("retry")
      local worker = require("retry.load").worker
      if worker and worker.index == 5 then error("odd one out", 0) end
      if worker and worker.index >= 2 then error("no luck", 0) end
      retry.load{ url = %q, duration = 5, concurrency = 6, threads = 6 }
    ]]):format(h.url("/delay/50")))
    local code, _, err = lretry(script)
    os.remove(script)
    assert.equal(1, code, err)
    assert.is_truthy(err:find("retry.load: threads 2-4, 6 of 6 failed: no luck\n",
      1, true), err)
    assert.is_truthy(err:find("\n  thread 5 of 6 failed: odd one out\n", 1, true),
      err)
    local _, lines = err:gsub("failed:", "")
    assert.equal(2, lines, err)
  end)

  it("refuses more threads than the concurrency", function()
    local script = write_script(([[
      local retry = require("retry")
      retry.load{ url = %q, requests = 10, concurrency = 2, threads = 3 }
    ]]):format(h.url("/hello")))
    local code, _, err = lretry(script)
    os.remove(script)
    assert.equal(1, code)
    assert.is_truthy(err:find("threads (3) must be at most the concurrency (2)",
      1, true), err)
  end)

  it("keeps to the client's limit across the threads", function()
    -- Each thread makes its own client; together they hold the limit
    -- (split as the concurrency is), counted at the server.
    local url, key = h.counted("/delay/100", "threads-limit")
    local script = write_script(([[
      local retry = require("retry")
      local client = retry.RetryClient{ limit = 3 }
      local r = retry.load{ client = client, url = %q, duration = 1,
        concurrency = 8, threads = 2, quiet = true }
      print(r.requests .. " " .. tostring(r.capped_by))
    ]]):format(url))
    local code, out, err = lretry(script)
    os.remove(script)
    assert.equal(0, code, err)
    local requests, capped = out:match("^(%d+) (%S+)\n$")
    assert.equal("3", capped, out)
    retry.run(function()
      local c = h.counts(retry, key)
      assert.equal(tonumber(requests), c.hits)
      assert.equal(3, c.peak)
    end)
  end)

  it("refuses more threads than the client's limit", function()
    for _, field in ipairs({ "limit", "limit_per_host" }) do
      local script = write_script(([[
        local retry = require("retry")
        local client = retry.RetryClient{ %s = 2 }
        retry.load{ client = client, url = %q, requests = 10,
          concurrency = 8, threads = 3 }
      ]]):format(field, h.url("/hello")))
      local code, _, err = lretry(script)
      os.remove(script)
      assert.equal(1, code)
      assert.is_truthy(err:find("threads (3) must be at most the client's "
        .. field .. " (2)", 1, true), err)
    end
  end)

  it("refuses a load whose settings differ between the threads", function()
    -- The script runs again in each worker, where a file it made in the
    -- main thread gives the load another duration.
    local marker = os.tmpname()
    os.remove(marker)
    local script = write_script(([[
      local retry = require("retry")
      local seen = io.open(%q)
      local duration = 1
      if seen then seen:close(); duration = 2
      else assert(io.open(%q, "w")):close() end
      retry.load{ url = %q, duration = duration, concurrency = 2,
        threads = 2, quiet = true }
    ]]):format(marker, marker, h.url("/hello")))
    local code, _, err = lretry(script)
    os.remove(script)
    os.remove(marker)
    assert.equal(1, code)
    assert.is_truthy(err:find("load number 1 of the script has duration = 2 "
      .. "where the main thread's has duration = 1", 1, true), err)
  end)

  it("runs a load started by a worker's request as that thread's own",
    function()
      local url, key = h.counted("/hello", "threads-outer")
      local inner_url, inner_key = h.counted("/hello", "threads-inner")
      local script = write_script(([[
        local retry = require("retry")
        local r = retry.load{ url = %q, requests = 4, concurrency = 2,
          threads = tonumber(arg[1]), quiet = true,
          request = function(client, i)
            local inner = retry.load{ url = %q, requests = 3,
              concurrency = 2, threads = tonumber(arg[2]), quiet = true }
            assert(inner.responses == 3)
            return client:get(%q)
          end }
        print(r.responses .. " " .. r.errors)
        for _, e in pairs(r.error_examples) do print(e) end
      ]]):format(url, inner_url, url))
      local code, out, err = lretry(script .. " 2 1")
      assert.equal(0, code, err)
      assert.equal("4 0\n", out)
      retry.run(function()
        assert.equal(4, h.hits(retry, key))
        assert.equal(12, h.hits(retry, inner_key))
      end)
      -- A load with threads cannot start inside another: its threads
      -- would run the script from the start.
      code, out, err = lretry(script .. " 1 2")
      os.remove(script)
      assert.equal(0, code, err)
      assert.is_truthy(out:find("^0 4\n"), out)
      assert.is_truthy(out:find("a load with threads cannot start while "
        .. "another load runs", 1, true), out)
    end)

  it("refuses a load with threads beside one", function()
    local url = h.url("/hello")
    local script = write_script(([[
      local retry = require("retry")
      local beside = retry.spawn(function()
        retry.sleep(0.2)
        local ok, e = pcall(retry.load, { url = %q, duration = 0.2,
          concurrency = 2, threads = 2, quiet = true })
        print("threads beside: " .. tostring(e.message or e))
      end)
      retry.load{ url = %q, duration = 1, concurrency = 2, threads = 2,
        quiet = true }
      beside:await()
    ]]):format(url, url))
    local code, out, err = lretry(script)
    os.remove(script)
    assert.equal(0, code, err)
    assert.is_truthy(out:find("threads beside: retry.load: a load with "
      .. "threads cannot start while another load runs", 1, true), out)
  end)

  it("does not count the loads inside a load", function()
    -- The load with threads is number 2 in every thread: the workers
    -- never run the first load's requests, which start loads of their own.
    local url, key = h.counted("/hello", "threads-inside")
    local script = write_script(([[
      local retry = require("retry")
      retry.load{ url = %q, requests = 2, concurrency = 1, quiet = true,
        request = function(client)
          retry.load{ url = %q, requests = 1, concurrency = 1, quiet = true }
          return client:get(%q)
        end }
      local r = retry.load{ url = %q, requests = 10, concurrency = 2,
        threads = 2, quiet = true }
      print("after: " .. r.requests)
    ]]):format(url, url, url, url))
    local code, out, err = lretry(script)
    os.remove(script)
    assert.equal(0, code, err)
    assert.equal("after: 10\n", out)
    retry.run(function() assert.equal(14, h.hits(retry, key)) end)
  end)

  it("needs the lretry program", function()
    retry.run(function()
      local ok, e = pcall(retry.load, { url = h.url("/hello"), requests = 4,
        concurrency = 2, threads = 2, quiet = true })
      assert.is_false(ok)
      assert.is_true(retry.is_error(e, "invalid"))
      assert.is_truthy(e.message:find("threads need the lretry program", 1,
        true), e.message)
    end)
  end)

  it("does not count checks that Ctrl-C cut as failed", function()
    for _, threads in ipairs({ 1, 2 }) do
      local script = write_script(([[
        local retry = require("retry")
        local r = retry.load{ url = %q, requests = 40, concurrency = 4,
          threads = %d, quiet = true, thresholds = { check_rate = 0.5 },
          check = function(response) retry.sleep(60) return true end }
        print(r.responses .. " " .. r.checks .. " " .. r.checks_failed .. " "
          .. tostring(r.thresholds.check_rate.value))
      ]]):format(h.url("/hello"), threads))
      local code, out, err = h.sh("sh -c " .. q(h.lretry .. " " .. script
        .. " & pid=$!; sleep 1; kill -INT $pid; wait $pid"))
      os.remove(script)
      assert.equal(130, code, out .. err)
      -- Four responses, one a worker, each in a check Ctrl-C cut: no
      -- check, so no check_rate (a threshold on nothing is crossed).
      assert.equal("4 0 0 nil\n", out)
    end
  end)

  it("stops on Ctrl-C and exits 130", function()
    local script = write_script(([[
      local retry = require("retry")
      local r = retry.load{ url = %q, concurrency = 4, duration = 20,
        threads = 2, quiet = true }
      print("interrupted " .. tostring(r.interrupted) .. " "
        .. r.by_error.cancelled)
    ]]):format(h.url("/delay/300")))
    local t0 = retry.now()
    local code, out, err = h.sh("sh -c " .. q(h.lretry .. " " .. script
      .. " & pid=$!; sleep 1; kill -INT $pid; wait $pid"))
    os.remove(script)
    assert.equal(130, code, out .. err)
    assert.is_true(retry.now() - t0 < 3)
    assert.equal("interrupted true 4\n", out)
  end)
end)
