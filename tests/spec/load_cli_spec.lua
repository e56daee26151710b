-- The load-check command line (issue 8): lretry load | probe | merge, the
-- exit statuses a CI job reads, the live progress line (only on a
-- terminal: run under `script` for a pseudo-terminal) and Ctrl-C.
local retry = require("retry")
local h = require("helper")

local q, lretry, slurp = h.quote, h.run_lretry, h.slurp

describe("lretry load", function()
  it("sends -n requests at -c and prints the summary", function()
    local url, key = h.counted("/hello", "cli")
    local code, out, err = lretry("load " .. q(url) .. " -c 8 -n 500 --expect 200")
    assert.equal(0, code, err)
    assert.equal("", err) -- no progress line: stderr is not a terminal
    assert.is_truthy(out:find("requests%s+500"), out)
    assert.is_truthy(out:find("200: 500", 1, true), out)
    assert.is_truthy(out:find("100.00%   500 passed, 0 failed", 1, true), out)
    assert.is_truthy(out:find("p99.9", 1, true), out)
    retry.run(function()
      local c = h.counts(retry, key)
      assert.equal(500, c.hits)
      assert.is_true(c.peak <= 8)
    end)
  end)

  it("warns when -c needs more connections than the open-file limit "
    .. "allows", function()
    -- Each request in flight holds a connection, and a file for it. The
    -- load still runs: the limit may be raised before it gets there.
    local code, out, err = h.sh("ulimit -n 200 && " .. h.lretry .. " load "
      .. q(h.url("/hello")) .. " -c 300 -n 300 --quiet")
    assert.equal(0, code, err)
    assert.is_truthy(err:find("concurrency 300 needs as many connections, "
      .. "and the open-file limit (ulimit -n) is 200", 1, true), err)
    assert.is_truthy(out:find("requests%s+300"), out)
    -- Under the limit, or with fewer requests than -c, nothing is said;
    -- nor for an open model's default cap on requests in flight, nor when
    -- a script's client lets fewer through.
    for _, args in ipairs({ " -c 300 -n 100", " -r 10 -n 5", " -r 10 -d 0.2",
        " -r 10 -c 300 -n 100" }) do
      code, out, err = h.sh("ulimit -n 200 && " .. h.lretry .. " load "
        .. q(h.url("/hello")) .. args .. " --quiet")
      assert.equal(0, code, err)
      assert.equal("", err, args)
    end
    local script = h.write_script([[
      local retry = require("retry")
      local c = retry.RetryClient{ limit = 100 }
      local r = retry.load{ client = c, concurrency = 300, requests = 300,
        quiet = true, request = require("retry.client").prepare(c, "GET",
          arg[1]) }
      print(r.requests, r.errors)
    ]])
    code, out, err = h.sh("ulimit -n 200 && " .. h.lretry .. " "
      .. q(script) .. " " .. q(h.url("/hello")))
    os.remove(script)
    assert.equal(0, code, err)
    assert.equal("", err)
    assert.equal("300\t0\n", out)
  end)

  it("exits 2 when a threshold is crossed, 0 when all hold", function()
    local url = h.url("/delay/20")
    local code, out = lretry("load " .. q(url) .. " -n 20 -c 2 --quiet "
      .. "--threshold p50=5ms --threshold error_rate=0")
    assert.equal(2, code)
    assert.is_truthy(out:find("✗ p50", 1, true), out)
    assert.is_truthy(out:find("CROSSED", 1, true), out)
    assert.is_truthy(out:find("✓ error_rate", 1, true), out)
    code, out = lretry("load " .. q(url) .. " -n 20 -c 2 --quiet "
      .. "--threshold p50=2s --threshold rps=1")
    assert.equal(0, code, out)
    assert.is_falsy(out:find("CROSSED", 1, true))
  end)

  it("runs an open model with -r and -d", function()
    local url, key = h.counted("/hello", "cli")
    local code, out, err = lretry("load " .. q(url) .. " -r 100 -d 1s")
    assert.equal(0, code, err)
    assert.is_truthy(out:find("open model, 100/s", 1, true), out)
    local n = tonumber(out:match("requests%s+(%d+)"))
    assert.is_true(n >= 95 and n <= 101, out)
    retry.run(function() assert.equal(n, h.hits(retry, key)) end)
  end)

  it("sends -m, -H and --body, retries with --attempts and --strategy",
    function()
      local prefix = h.key("cli-fail")
      local url = h.url("/fail?n=1&key=" .. prefix)
      local code, out = lretry("load " .. q(url) .. " -n 1 -c 1 -m put -H "
        .. q("X-Test: yes") .. " --body hello --attempts 2 --strategy list")
      assert.equal(0, code, out)
      assert.is_truthy(out:find("2: 1 (100.0%)", 1, true), out)
      code, out = lretry("load " .. q(h.url("/echo")) .. " -n 1 -c 1 -m PUT -H "
        .. q("X-Test: yes") .. " --body hello --json -")
      assert.equal(0, code, out)
      assert.equal(1, require("cjson").decode(out).by_status["200"])
      -- The header reaches the server: /auth answers 200 only with it.
      code, out = lretry("load " .. q(h.url("/auth/u/p")) .. " -n 3 -c 1 -H "
        .. q("Authorization: Basic dTpw") .. " --expect 200")
      assert.equal(0, code, out)
      assert.is_truthy(out:find("200: 3", 1, true), out)
      code, out = lretry("load " .. q(h.url("/auth/u/p")) .. " -n 3 -c 1")
      assert.is_truthy(out:find("401: 3", 1, true), out)
    end)

  it("writes --json that follows the schema and matches the summary",
    function()
      local path = os.tmpname()
      local code, out = lretry("load " .. q(h.url("/hello")) .. " -n 200 -c 4 "
        .. "--json " .. path)
      assert.equal(0, code, out)
      local j = require("cjson").decode(slurp(path))
      os.remove(path)
      assert.equal(200, j.requests)
      assert.equal(200, j.histogram.count)
      assert.is_truthy(out:find(require("retry.summary").time(j.latency.p99),
        1, true), out)
    end)

  it("reads 0.7% as 0.007 exactly, and shows a crossed limit apart from "
    .. "its value", function()
      local rec = require("retry.result").recorder(0)
      for i = 1, 1000 do rec:finished(0.5, 0.2, 1, i <= 7 and 503 or 200) end
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(rec:result{ duration = 1, model = "closed" }:to_json())
      f:close()
      local code, out = lretry("merge " .. path .. " --threshold error_rate=0.7%")
      assert.equal(0, code, out)
      code, out = lretry("merge " .. path .. " --threshold error_rate=0.69%")
      assert.equal(2, code, out)
      assert.is_truthy(out:find("error_rate <= 0.69%%%s+0.7%%  CROSSED"), out)
      code, out = lretry("merge " .. path .. " --threshold p50=0.19999999s")
      assert.equal(2, code, out)
      assert.is_truthy(out:find("<= 199.99999ms 200ms  CROSSED", 1, true), out)
      os.remove(path)
    end)

  it("names bad input and exits 2", function()
    local cases = {
      { "load", "a URL is needed" },
      { "load /x", "must start with http" },
      { "load http://x -c 0", "--concurrency must be an integer >= 1" },
      { "load http://x -d soon", "-d must be a time" },
      { "load http://x -d 0", "-d must be more than 0" },
      { "load http://", "the URL has no host" },
      { "load https:///x", "the URL has no host" },
      { "load http://x --strategy slow", "--strategy must be" },
      { "load http://x --threshold p98=1", "unknown threshold" },
      { "load http://x --threshold p99", "NAME=LIMIT" },
      { "load http://x --bogus", "unknown option --bogus" },
      { "load http://x -H nocolon", "-H must be 'Name: value'" },
      { "load http://x --expect 999", "is not a status code" },
      { "load http://x --expect 0xC8", "is not a status code" },
      { "load http://x -c 0x10", "--concurrency must be an integer >= 1" },
      { "load http://x -n 1.5", "--requests must be an integer >= 0" },
      { "load http://x -r 1e7", "-r must be at most 1000000 requests" },
      { "load http://x -c 1e8", "-c must be at most 1000000 requests" },
      { "load http://x -r 1e999", "-r must be a number > 0" },
      { "load http://x -t 1025 -c 2000", "--threads must be at most 1024" },
      { "load http://x --threshold rps=0x10", "is not a number" },
      { "load http://x --threshold p99=1ms --threshold p99=10s",
        "--threshold p99 is given twice" },
      { "merge a.json --threshold rps=1 --threshold rps=2",
        "--threshold rps is given twice" },
      { "load http://x --grace soon", "--grace must be a time" },
      { "load http://x -n 5 --grace 1s", "--grace needs -d" },
      { "probe", "give at least one URL" },
      { "probe http://x --json x.json", "--json does not apply to probe" },
      { "probe http://x -c 3", "--concurrency does not apply to probe" },
      { "merge", "give the JSON files" },
    }
    for _, c in ipairs(cases) do
      local code, out, err = lretry(c[1])
      assert.equal(2, code, c[1])
      assert.equal("", out, c[1])
      assert.is_truthy(err:find(c[2], 1, true), c[1] .. ": " .. err)
      assert.is_truthy(err:find("--help", 1, true), c[1] .. ": " .. err)
    end
  end)

  it("cancels what is still in flight --grace after -d ends", function()
    local url, key = h.counted("/delay/3000", "grace")
    local started = retry.now()
    local code, out, err = lretry("load " .. q(url) .. " -c 2 -d 0.2s "
      .. "--grace 0.1s --quiet")
    assert.equal(0, code, err)
    -- Both requests were cut 0.1 s after the duration, not answered 3 s on.
    local took = retry.now() - started
    assert.is_true(took < 2.5, "took " .. took)
    assert.is_truthy(out:find("requests%s+2"), out)
    assert.is_truthy(out:find("cancelled: 2", 1, true), out)
    assert.is_truthy(out:find("still in flight 0.1 s after the load's "
      .. "duration ended (grace)", 1, true), out)
    -- The server saw both requests, and both connections closed under them.
    retry.run(function()
      local c = h.counts(retry, key)
      for _ = 1, 50 do
        if c.aborted == 2 then break end
        retry.sleep(0.02)
        c = h.counts(retry, key)
      end
      assert.equal(2, c.hits)
      assert.equal(2, c.aborted)
    end)
  end)

  it("reads every number one way: digits, a fraction, an exponent", function()
    local url, key = h.counted("/hello", "cli-numbers")
    local code, out, err = lretry("load " .. q(url) .. " -n 1e2 -c 4 "
      .. "--expect '200, 204' --threshold rps=1e9 --quiet")
    -- 100 requests, all checked; the rps limit is crossed (exit 2).
    assert.equal(2, code, err)
    assert.is_truthy(out:find("requests%s+100"), out)
    assert.is_truthy(out:find("100 passed, 0 failed", 1, true), out)
    assert.is_truthy(out:find("✗ rps", 1, true), out)
    retry.run(function() assert.equal(100, h.hits(retry, key)) end)
  end)

  it("documents every option in --help", function()
    local code, out = lretry("load --help")
    assert.equal(0, code)
    for _, opt in ipairs({ "-c", "-n", "-d", "-r", "-m", "-H", "--body",
      "--attempts", "--strategy", "--json", "--quiet", "--threshold",
      "--expect", "--timeout" }) do
      assert.is_truthy(out:find(opt, 1, true), opt)
    end
    code, out = lretry("--help")
    assert.equal(0, code)
    for _, cmd in ipairs({ "lretry load", "lretry probe", "lretry merge",
      "--json", "130" }) do
      assert.is_truthy(out:find(cmd, 1, true), cmd)
    end
  end)
end)

describe("the progress line", function()
  local function under_terminal(args, before)
    -- script(1) gives the command a pseudo-terminal; its output is the
    -- terminal's, stdout and stderr together. The sanitizer runs preload
    -- ASan for stock lua5.4; script itself must not inherit it (its own
    -- leaks would fail the run), and the ASan lretry needs no preload.
    return h.sh("env -u LD_PRELOAD script -qec " .. q((before or "")
      .. h.lretry .. " " .. args) .. " /dev/null")
  end

  it("is drawn on a terminal and erased before the summary", function()
    local code, out = under_terminal("load " .. q(h.url("/hello")) .. " -c 2 -d 1s")
    assert.equal(0, code, out)
    assert.is_truthy(out:find("\r\27[K", 1, true), out)
    assert.is_truthy(out:find("s left  %d+/s  in flight %d+  errors 0  retries 0"), out)
    assert.is_truthy(out:find("\r\27[Klretry load:", 1, true), out)
  end)

  it("fits a narrow terminal, so erasing it leaves nothing behind",
    function()
      local code, out = under_terminal("load " .. q(h.url("/hello"))
        .. " -c 2 -d 1s", "stty cols 30; ")
      assert.equal(0, code, out)
      local drawn = 0
      for text in out:gmatch("\r\27%[K([^\r\n]*)") do
        if text ~= "" and not text:find("^lretry load") then
          drawn = drawn + 1
          assert.is_true(#text <= 29, text)
        end
      end
      assert.is_true(drawn >= 2, out)
    end)

  it("is not drawn with --quiet, nor when stderr is not a terminal",
    function()
      local code, out = under_terminal("load " .. q(h.url("/hello"))
        .. " -c 2 -d 1s --quiet")
      assert.equal(0, code, out)
      assert.is_falsy(out:find("in flight", 1, true), out)
      code, out = under_terminal("load " .. q(h.url("/hello"))
        .. " -c 2 -d 1s 2>/dev/null")
      assert.equal(0, code, out)
      assert.is_falsy(out:find("in flight", 1, true), out)
    end)
end)

describe("Ctrl-C during a load", function()
  -- `lretry load` of 8 requests that take 300 ms, ARGS added, sent SIGNAL
  -- after 1 s: checks what every interrupted load shows (exit status,
  -- summary, the 8 in flight cancelled with `message`, the JSON adding
  -- up, attempts as the server counted them); returns the JSON, the
  -- server's key and how long the run took.
  local function interrupted_load(signal, status, message, args)
    local url, key = h.counted("/delay/300", "cli-" .. signal)
    local path = os.tmpname()
    local t0 = retry.now()
    local code, out = h.sh("sh -c " .. q(h.lretry .. " load " .. q(url)
      .. " -c 8 -d 20s " .. args .. " --json " .. path .. " & pid=$!; "
      .. "sleep 1; kill -" .. signal .. " $pid; wait $pid"))
    local took = retry.now() - t0
    assert.equal(status, code, out)
    assert.is_truthy(out:find("INTERRUPTED", 1, true), out)
    local j = require("cjson").decode(slurp(path))
    os.remove(path)
    assert.is_true(j.interrupted)
    assert.equal(j.requests, j.responses + j.errors)
    assert.equal(8, j.by_error.cancelled)
    assert.equal(message, j.error_examples.cancelled)
    retry.run(function()
      assert.equal(j.attempts_sent, h.counts(retry, key).hits)
    end)
    return j, key, took
  end

  it("stops the same way on SIGTERM, exiting 143, with threads or without",
    function()
      for _, threads in ipairs({ 1, 2 }) do
        interrupted_load("TERM", 143, "cancelled by SIGTERM", "-t " .. threads)
      end
    end)

  it("cancels what is in flight, prints the partial summary, writes the "
    .. "JSON and exits 130", function()
      local j, key, took = interrupted_load("INT", 130, "cancelled by Ctrl-C",
        "")
      assert.is_true(took < 3, tostring(took))
      -- Cut by the load, not answered by the server: no latency for them.
      assert.equal(j.requests - 8, j.histogram.count)
      retry.run(function()
        -- The server sees the cancelled requests go away.
        local deadline = retry.now() + 2
        while h.counts(retry, key).aborted < 8 and retry.now() < deadline do
          retry.sleep(0.05)
        end
        assert.equal(8, h.counts(retry, key).aborted)
      end)
    end)

  it("ends a load whose request function catches the cancel once", function()
    local script = h.write_script(([[
      local retry = require("retry")
      local r = retry.load{ concurrency = 2, duration = 20, quiet = true,
        request = function(c)
          local ok, resp = pcall(c.get, c, %q)
          if ok then return resp end
          return c:get(%q) -- after a cancel: cancelled again
        end }
      print("requests " .. r.requests .. ", interrupted " .. tostring(r.interrupted))
    ]]):format(h.url("/delay/10000"), h.url("/delay/10000")))
    local t0 = retry.now()
    -- Killed after 15 s if it does not end (before the fix: after 10 s,
    -- when the request it sent again was answered); timeout passes the
    -- SIGINT on to lretry alone.
    local code, out, err = h.sh("sh -c " .. q("timeout --foreground -s "
      .. "KILL 15 " .. h.lretry .. " " .. script .. " & pid=$!; sleep 1; "
      .. "kill -INT $pid; wait $pid"))
    os.remove(script)
    assert.equal(130, code, out)
    assert.is_truthy(out:find("requests 2, interrupted true", 1, true), out)
    -- Ended by the second cancel: nothing held it.
    assert.is_falsy(err:find("still running", 1, true), err)
    assert.is_true(retry.now() - t0 < 3, tostring(retry.now() - t0))
  end)

  it("says why a load does not end when its request function catches "
    .. "every cancel", function()
    -- Each request swallows the load's cancels for 1.5 s after the grace,
    -- then gives up: the load ends, having said on stderr after 1 s which
    -- requests held it and why.
    local script = h.write_script(([[
      local retry = require("retry")
      local r = retry.load{ concurrency = 2, duration = 0.2, grace = 0,
        quiet = true, request = function(c)
          local ok, e = pcall(c.get, c, %q)
          if ok then return e end
          local give_up = retry.now() + 1.5
          while retry.now() < give_up do pcall(retry.sleep, 0.05) end
          error(e, 0)
        end }
      print(("requests %%d, cancelled %%d"):format(r.requests,
        r.by_error.cancelled or 0))
    ]]):format(h.url("/delay/10000")))
    local t0 = retry.now()
    local code, out, err = h.sh("timeout -s KILL 15 " .. h.lretry .. " "
      .. script)
    os.remove(script)
    assert.equal(0, code, err)
    assert.is_truthy(out:find("requests 2, cancelled 2", 1, true), out)
    assert.is_truthy(err:find("2 requests are still running 1 s after the "
      .. "load cancelled them at the end of its grace", 1, true), err)
    assert.is_truthy(err:find("catches the `cancelled` error", 1, true), err)
    local took = retry.now() - t0
    assert.is_true(took > 1.5 and took < 5, tostring(took))
  end)

  it("a second Ctrl-C ends the process at once", function()
    -- After an interrupted load the script would sleep for 30 s.
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
      local retry = require("retry")
      retry.load{ url = %q, concurrency = 2, duration = 20, quiet = true }
      io.stdout:write("load over\n"); io.stdout:flush()
      retry.sleep(30)
    ]]):format(h.url("/delay/100")))
    f:close()
    local t0 = retry.now()
    local code, out = h.sh("sh -c " .. q(h.lretry .. " " .. script
      .. " & pid=$!; sleep 1; kill -INT $pid; sleep 0.5; kill -INT $pid; "
      .. "wait $pid"))
    os.remove(script)
    assert.equal(130, code, out)
    assert.is_truthy(out:find("load over", 1, true), out)
    assert.is_true(retry.now() - t0 < 4)
  end)
end)

describe("Ctrl-C in a script that runs several loads", function()
  it("stops the script: later loads do not start, and it exits 130",
    function()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        local retry = require("retry")
        for n = 1, 3 do
          local r = retry.load{ url = %q, concurrency = 2, duration = 3,
            quiet = true }
          print("load " .. n .. (r.interrupted and ": interrupted" or ": done"))
        end
      ]]):format(h.url("/delay/50")))
      f:close()
      local t0 = retry.now()
      local code, out, err = h.sh("sh -c " .. q(h.lretry .. " " .. script
        .. " & pid=$!; sleep 1; kill -INT $pid; wait $pid"))
      os.remove(script)
      assert.equal(130, code, out .. err)
      assert.is_true(retry.now() - t0 < 2.5)
      assert.is_truthy(out:find("load 1: interrupted", 1, true), out)
      assert.is_falsy(out:find("load 2", 1, true), out)
      assert.is_truthy(err:find("an earlier load was interrupted", 1, true),
        err)
    end)
end)

describe("lretry probe", function()
  it("takes hundreds of URLs", function()
    local urls = {}
    for i = 1, 300 do urls[i] = q(h.url(i <= 290 and "/hello" or "/status/500")) end
    local code, out = lretry("probe " .. table.concat(urls, " "))
    assert.equal(1, code)
    assert.is_truthy(out:find("300 URLs, 10 failed", 1, true), out)
  end)

  it("prints one line per URL and exits 1 when one fails", function()
    local good = h.url("/fail?n=1&key=" .. h.key("probe"))
    local code, out = lretry("probe " .. q(h.url("/hello")) .. " " .. q(good)
      .. " " .. q(h.url("/status/404")))
    assert.equal(1, code, out)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(4, #lines, out)
    assert.equal("3 URLs, 1 failed", lines[4])
    assert.is_truthy(lines[1]:find("^OK .*200 OK, 1 attempt, "), lines[1])
    assert.is_truthy(lines[2]:find("^OK .*200 OK, 2 attempts, "), lines[2])
    assert.is_truthy(lines[3]:find("^FAIL .*404 Not Found, 1 attempt"), lines[3])
    code = lretry("probe " .. q(h.url("/hello")))
    assert.equal(0, code)
  end)
end)

describe("lretry load over https", function()
  it("verifies the certificate: --cacert trusts a PEM file, -k skips it",
    function()
      local url = q(h.tls_url("/hello"))
      local code, out, err = lretry("load " .. url .. " -n 3 --quiet")
      assert.equal(0, code, err)
      assert.is_truthy(out:find("tls: 3", 1, true), out)
      for _, how in ipairs({ "--cacert " .. q(h.tls_ca), "-k", "--insecure" }) do
        code, out, err = lretry("load " .. url .. " -n 3 --quiet " .. how)
        assert.equal(0, code, err)
        assert.is_truthy(out:find("200: 3", 1, true), how .. ": " .. out)
      end
      code, out, err = lretry("load " .. url .. " -n 3 --cacert /nonexistent")
      assert.equal(2, code, out)
      assert.is_truthy(err:find('--cacert "/nonexistent" cannot be read', 1,
        true), err)
    end)
end)

describe("a JSON that cannot be written or read", function()
  it("exits 1 naming the file: a full disk, a directory", function()
    local code, out, err = lretry("load " .. q(h.url("/hello"))
      .. " -n 3 --quiet --json /dev/full")
    assert.equal(1, code, out .. err)
    assert.is_truthy(err:find("cannot write the JSON to /dev/full: No space "
      .. "left on device", 1, true), err)
    local path = os.tmpname()
    code = lretry("load " .. q(h.url("/hello")) .. " -n 3 --quiet --json "
      .. path)
    assert.equal(0, code)
    code, out, err = lretry("merge " .. path .. " --json /dev/full")
    assert.equal(1, code, out .. err)
    assert.is_truthy(err:find("^lretry merge: cannot write the JSON to "
      .. "/dev/full"), err)
    os.remove(path)
    code, out, err = lretry("merge /tmp")
    assert.equal(1, code, out .. err)
    assert.is_truthy(err:find("/tmp: Is a directory", 1, true), err)
  end)
end)

describe("an error that ends a command", function()
  -- A command of the CLI that fails as `lretry load` does when its threads
  -- cannot start: the same path from the command to the exit status.
  local function failing_command(raise)
    local script = h.write_script(([[
      local cli = require("retry.cli")
      cli.COMMANDS.failing = function() %s end
      cli.main("failing")
    ]]):format(raise))
    local code, out, err = lretry(script)
    os.remove(script)
    return code, out, err
  end

  it("is one line naming the command when lretry raised it on purpose",
    function()
      local code, out, err = failing_command(
        [[error("retry.load: thread 2 of 2 failed: not enough memory", 0)]])
      assert.equal(1, code, out .. err)
      assert.equal("lretry failing: retry.load: thread 2 of 2 failed: not "
        .. "enough memory\n", err)
    end)

  it("keeps its traceback when it is a fault in the code", function()
    local code, out, err = failing_command([[local t = nil; return t.x]])
    assert.equal(1, code, out .. err)
    assert.is_truthy(err:find("attempt to index", 1, true), err)
    assert.is_truthy(err:find("stack traceback:", 1, true), err)
  end)
end)

describe("lretry --json with a script", function()
  it("writes the load's JSON and exits 2 on a crossed threshold", function()
    local script, path = os.tmpname(), os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
      local retry = require("retry")
      local r = retry.load{ url = %q, requests = 30, thresholds = { rps = 1e9 } }
      io.write(r:summary())
    ]]):format(h.url("/hello")))
    f:close()
    local code, out = h.sh(h.lretry .. " --json " .. path .. " " .. script)
    os.remove(script)
    assert.equal(2, code, out)
    local j = require("cjson").decode(slurp(path))
    os.remove(path)
    assert.equal(30, j.requests)
    assert.is_false(j.thresholds.rps.ok)
  end)
end)
