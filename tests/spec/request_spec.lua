-- One attempt through the C core (contract sections 4 and 5), against the
-- bundled server over loopback.
local retry = require("retry")
local h = require("helper")
local expect = require("expect")

local function run(f) return retry.run(f) end

describe("a request", function()
  it("returns a Response with status, reason, method, url, headers, body", function()
    run(function()
      local r <close> = retry.request("GET", h.url("/hello"))
      assert.equal(200, r.status)
      assert.equal("OK", r.reason)
      assert.is_true(r.ok)
      assert.equal("GET", r.method)
      assert.equal(h.url("/hello"), r.url)
      assert.equal("hello\n", r:text())
      assert.equal("hello\n", r:read())
      assert.matches("^text/plain", r.headers["Content-Type"])
      assert.equal(r.headers["content-type"], r.headers["CONTENT-TYPE"])
      assert.equal("6", r.headers["content-length"])
      -- Its methods and metamethods take only a Response as self, and its
      -- headers' lookup only a headers table.
      expect.invalid("headers: expected a headers table as self, got number",
        getmetatable(r.headers).__index, 42, "content-type")
      local mt = getmetatable(r)
      -- (each named by its type's __name, as Lua's own errors do)
      local others = { { io.stdout, "FILE%*" },
        { require("retry.core").histogram(), "retry%.Histogram" },
        { {}, "table" } }
      for _, o in ipairs(others) do
        local other = o[1]
        local ok, err = pcall(r.text, other)
        assert.is_false(ok)
        assert.matches("expected a Response as self, got " .. o[2],
          tostring(err))
        ok, err = pcall(mt.__index, other, "status")
        assert.is_false(ok)
        assert.matches("expected a Response as self", tostring(err))
      end
      -- Nor does another userdata become one when a script copies every
      -- entry of the Response metatable into its own (restored after).
      local core = require("retry.core")
      local hmt = getmetatable(core.histogram())
      local saved = {}
      for k, v in pairs(hmt) do saved[k] = v end
      for k, v in pairs(mt) do hmt[k] = v end
      local ok, err = pcall(r.close, core.histogram())
      for k in pairs(saved) do hmt[k] = nil end
      for k in pairs(mt) do hmt[k] = nil end
      for k, v in pairs(saved) do hmt[k] = v end
      assert.is_false(ok)
      assert.matches("expected a Response as self", tostring(err))
      assert.equal(0, core.histogram():count())
    end)
  end)

  it("repeated without options, sends each call as it was made", function()
    -- Calls without options that repeat the last one share its request
    -- table: the method, the url and bad arguments must still count.
    run(function()
      local key = h.key("repeat")
      local url = h.url("/echo?key=" .. key)
      for _ = 1, 3 do
        assert.equal("GET", retry.request("GET", url):json().method)
      end
      assert.equal("POST", retry.request("post", url):json().method)
      assert.equal("POST", retry.request("POST", url):json().method)
      local other = retry.request("GET", h.url("/echo?other=1")):json()
      assert.equal("1", other.query.other)
      assert.equal(5, h.hits(retry, key))
      expect.invalid("method", retry.request, nil, url)
      expect.invalid("url", retry.request, "GET", nil)
      expect.invalid("method", retry.request, nil, nil)
      assert.equal("GET", retry.request("GET", url):json().method)
      expect.invalid("url", retry.request, "GET", "ftp://x/")
      expect.invalid("url", retry.request, "GET", "ftp://x/") -- again
      assert.equal(6, h.hits(retry, key))
    end)
  end)

  it("reports error statuses as data, not errors", function()
    run(function()
      local r = retry.request("GET", h.url("/status/404"))
      assert.equal(404, r.status)
      assert.equal("Not Found", r.reason)
      assert.is_false(r.ok)
      local ok, err = pcall(r.raise_for_status, r)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err, "status"))
      assert.equal(404, err.status)
      assert.equal(r, err.response)
      local fine = retry.request("GET", h.url("/status/204"))
      assert.equal(fine, fine:raise_for_status())
    end)
  end)

  it("sends method, query, headers and body", function()
    run(function()
      for _, m in ipairs({ "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }) do
        local r = retry.request(m:lower(), h.url("/echo"), {
          params = { a = 1, b = "x y&z" },
          headers = { ["X-Probe"] = "yes", ["X-Num"] = 7 },
          data = m ~= "GET" and "payload \"quoted\"\n" or nil,
        })
        local e = r:json()
        assert.equal(m, e.method)
        assert.equal(m, r.method)
        assert.same({ a = "1", b = "x y&z" }, e.query)
        assert.equal("yes", e.headers["x-probe"])
        assert.equal("7", e.headers["x-num"])
        if m ~= "GET" then assert.equal("payload \"quoted\"\n", e.body) end
      end
    end)
  end)

  it("sends lretry's User-Agent and Accept-Encoding unless the request sets its own", function()
    run(function()
      local e = retry.request("GET", h.url("/echo")):json()
      assert.equal(retry._VERSION:gsub(" ", "/"), e.headers["user-agent"])
      assert.truthy(e.headers["accept-encoding"]:find("gzip", 1, true), e.headers["accept-encoding"])
      e = retry.request("GET", h.url("/echo"),
        { headers = { ["user-agent"] = "probe/1", ["Accept-Encoding"] = "identity" } }):json()
      assert.equal("probe/1", e.headers["user-agent"])
      assert.equal("identity", e.headers["accept-encoding"])
      -- The handle the custom headers went out on goes back to the
      -- defaults, which every plain request shares.
      for _ = 1, 2 do
        e = retry.request("GET", h.url("/echo")):json()
        assert.equal(retry._VERSION:gsub(" ", "/"), e.headers["user-agent"])
        assert.truthy(e.headers["accept-encoding"]:find("gzip", 1, true))
      end
    end)
  end)

  it("sends plain calls to several urls in turn each to its own url", function()
    run(function()
      -- The core keeps what it read of a plain call's request table: each
      -- url's table must stay its own, through collections too.
      local a, ka = h.counted("/hello", "kept-a")
      local b, kb = h.counted("/hello", "kept-b")
      local client <close> = retry.RetryClient{}
      local other <close> = retry.RetryClient{ timeout = 5 }
      for i = 1, 6 do
        retry.request("GET", a):close()
        retry.request("GET", b):close()
        client:get(a):close()
        other:get(b):close()
        if i % 2 == 0 then collectgarbage("collect") end
      end
      assert.equal(12, h.hits(retry, ka))
      assert.equal(12, h.hits(retry, kb))
      assert.equal("HEAD", retry.request("HEAD", a).method)
      assert.equal(13, h.hits(retry, ka))
    end)
  end)

  it("sends JSON with its content type, and Basic auth", function()
    run(function()
      local e = retry.request("POST", h.url("/echo"), { json = { k = "v", n = { 1, 2 } } }):json()
      assert.equal("application/json", e.headers["content-type"])
      assert.same({ k = "v", n = { 1, 2 } }, require("cjson").decode(e.body))
      local ok = retry.request("GET", h.url("/auth/user/pass"), { auth = { "user", "pass" } })
      assert.equal(200, ok.status)
      local bad = retry.request("GET", h.url("/auth/user/pass"), { auth = { "user", "nope" } })
      assert.equal(401, bad.status)
    end)
  end)

  it("puts params before a #fragment, and labels no body as a form", function()
    run(function()
      local r = retry.request("GET", h.url("/echo#top"), { params = { page = 2 } })
      assert.same({ page = "2" }, r:json().query)
      local e = retry.request("POST", h.url("/echo")):json()
      assert.equal("POST", e.method)
      assert.is_nil(e.headers["content-type"])
      expect.invalid("not both", retry.request, "GET", h.url("/echo"),
        { params = { { "a", 1 }, b = 2 } })
      expect.invalid("must hold {name, value} pairs", retry.request, "GET",
        h.url("/echo"), { params = { { "a", 1, 2 } } })
      expect.invalid("must hold {name, value} pairs", retry.request, "GET",
        h.url("/echo"), { params = { { "a" } } })
    end)
  end)

  it("sends whole floats (as JSON decodes numbers) as integers", function()
    run(function()
      local n = require("cjson").decode('{"page": 2, "id": 9007199254740992}')
      local r <close> = retry.request("GET", h.url("/echo"), {
        params = { page = n.page, id = n.id, half = 2.5, list = { 1.0, 3 },
          big = 2.0 ^ 63, frac = 1e15 + 0.5 },
        headers = { ["X-Page"] = n.page, ["X-Half"] = 0.5,
          ["X-Big"] = 1e19 } })
      assert.truthy(r.url:find("?big=9223372036854775808&frac=1000000000000000.5"
        .. "&half=2.5&id=9007199254740992&list=1&list=3&page=2", 1, true),
        r.url)
      local e = r:json()
      assert.equal("10000000000000000000", e.headers["x-big"])
      assert.equal("2", e.headers["x-page"])
      assert.equal("0.5", e.headers["x-half"])
      -- What no server could read back is refused, naming it.
      expect.invalid("params value for \"g\" must be a finite number, got "
        .. "%-?nan", retry.request, "GET", h.url("/echo"),
        { params = { g = 0 / 0 } })
      expect.invalid("params value for \"l\" must be a finite number",
        retry.request, "GET", h.url("/echo"), { params = { l = { 1, math.huge } } })
      expect.invalid("params value for \"p\" must be a string, number or "
        .. "boolean, got a function", retry.request, "GET", h.url("/echo"),
        { params = { { "p", print } } })
      expect.invalid('header "X%-Inf": header values must be finite numbers',
        retry.request, "GET", h.url("/echo"),
        { headers = { ["X-Ok"] = "1", ["X-Inf"] = -math.huge } })
      -- A header name is shown with its unprintable bytes as \ddd, three
      -- digits ("X\0010" is not "X\n"), and cut after 37 bytes.
      expect.invalid('header "X A\\013\\010\\034": header names must be HTTP '
        .. "tokens", retry.request, "GET", h.url("/echo"),
        { headers = { ["X A\r\n\""] = "1" } })
      expect.invalid('^header "X\\0010": header names', retry.request, "GET",
        h.url("/echo"), { headers = { ["X\0010"] = "1" } })
      local err = expect.invalid('^header "' .. ("n"):rep(36) .. ' %.%.%.": header '
        .. "names", retry.request, "GET", h.url("/echo"),
        { headers = { [("n"):rep(36) .. " " .. ("n"):rep(100000)] = "1" } })
      assert.is_true(#err.message < 200, err.message)
      expect.invalid('header "X%-Ok": header values must not hold CR, LF',
        retry.request, "GET", h.url("/echo"), { headers = { ["X-Ok"] = "a\nb" } })
      expect.invalid("params value for \"a\" must be a string, number, "
        .. "boolean or a list of them, got a table", retry.request, "GET",
        h.url("/echo"), { params = { a = { b = 1 } } })
    end)
  end)

  it("keeps status read-only and names read() when called wrongly", function()
    run(function()
      local r = retry.request("GET", h.url("/hello"))
      expect.invalid("response.status is read%-only", function() r.status = 999 end)
      expect.invalid("response.ok is read%-only", function() r.ok = false end)
      assert.equal(200, r.status)
      r.note = "mine"
      assert.equal("mine", r.note)
      r[1] = "one"
      assert.equal("one", r[1])
      expect.invalid("^response:read: expected a Response", r.read)
      expect.invalid("^response:text: expected a Response", r.text, 5)
    end)
  end)

  it("does HEAD without a body and follows redirects", function()
    run(function()
      local r = retry.request("HEAD", h.url("/hello"))
      assert.equal(200, r.status)
      assert.equal("", r:text())
      local red = retry.request("GET", h.url("/redirect?to=/hello"))
      assert.equal(200, red.status)
      assert.equal(h.url("/hello"), red.url)
      assert.equal("hello\n", red:text())
    end)
  end)

  -- One request at a time reuses one easy handle, which keeps its last
  -- URL parsed (src/transfer.c set_url): each request still goes where it
  -- says, after another URL and after a redirect, as the server counts.
  it("sends each request to its own URL on a reused handle", function()
    run(function()
      local a, key_a = h.counted("/status/200", "url-a")
      local b, key_b = h.counted("/status/200", "url-b")
      local target, key_t = h.counted("/status/200", "url-target")
      local red = h.url("/redirect?to=" .. target:gsub("[^%w/:._-]",
        function(c) return ("%%%02X"):format(c:byte()) end))
      local order = { a, a, b, a, red, a, red, red, b }
      for _, url in ipairs(order) do
        local r <close> = retry.request("GET", url)
        assert.equal(200, r.status)
        assert.equal(url == red and target or url, r.url)
      end
      assert.same({ 4, 2, 3 }, { h.hits(retry, key_a), h.hits(retry, key_b),
        h.hits(retry, key_t) })
    end)
  end)

  it("carries large bodies intact", function()
    run(function()
      local r = retry.request("GET", h.url("/bytes/3000000"))
      assert.equal(3000000, #r:text())
      local big = string.rep("0123456789", 100000)
      local e = retry.request("POST", h.url("/echo"), { data = big }):json()
      assert.equal(big, e.body)
    end)
  end)

  it("json() raises on a body that is not JSON", function()
    run(function()
      local r = retry.request("GET", h.url("/hello"))
      expect.invalid("not valid JSON", r.json, r)
    end)
  end)

  it("close and <close> both free the body and keep status, reason and headers", function()
    run(function()
      local r = retry.request("GET", h.url("/hello"))
      r:close()
      r:close()
      assert.equal(200, r.status)
      assert.equal("OK", r.reason)
      assert.matches("^text/plain", r.headers["content-type"])
      expect.invalid("closed", r.text, r)
      local kept
      do
        local s <close> = retry.request("GET", h.url("/hello"))
        kept = s
      end
      expect.invalid("closed", kept.text, kept)
      -- headers were never read before the close: still there after it
      assert.equal(200, kept.status)
      assert.equal("OK", kept.reason)
      assert.equal("6", kept.headers["content-length"])
    end)
  end)

  it("lets the retry layer attach fields", function()
    run(function()
      local r = retry.request("GET", h.url("/hello"))
      r.attempts = 3
      assert.equal(3, r.attempts)
      assert.matches("^<Response %[200%] GET ", tostring(r))
    end)
  end)

  it("runs 1,000 concurrently from one script, all answered", function()
    local statuses = run(function()
      local tasks = {}
      for i = 1, 1000 do
        tasks[i] = retry.spawn(function()
          local r <close> = retry.request("GET", h.url("/echo"), { params = { i = i } })
          assert.equal(tostring(i), r:json().query.i)
          return r.status
        end)
      end
      return retry.gather(tasks)
    end)
    local ok = 0
    for i = 1, 1000 do if statuses[i] == 200 then ok = ok + 1 end end
    assert.equal(1000, ok)
  end)
end)

describe("a failed attempt raises an error object", function()
  local function fails(method, url, opts)
    return run(function()
      local ok, err = pcall(retry.request, method, url, opts)
      assert.is_false(ok)
      assert.is_true(retry.is_error(err))
      return err
    end)
  end

  it("connect: connection refused", function()
    local e = fails("GET", "http://127.0.0.1:1/x")
    assert.equal("connect", e.kind)
    assert.equal(7, e.curl_code)
    assert.equal("GET", e.method)
    assert.equal("http://127.0.0.1:1/x", e.url)
    assert.equal(1, e.attempt)
    assert.matches("^retry.connect error: .*%(GET http://127.0.0.1:1/x, attempt 1%)$",
      tostring(e))
  end)

  it("prints no credentials of the url", function()
    local e = fails("GET", "http://alice:s3cret@127.0.0.1:1/x")
    assert.equal("http://alice:s3cret@127.0.0.1:1/x", e.url)
    assert.matches("%(GET http://%*%*%*@127.0.0.1:1/x, attempt 1%)$", tostring(e))
  end)

  it("dns: name not resolved", function()
    assert.equal("dns", fails("GET", "http://no-such-host.invalid/").kind)
  end)

  it("timeout: enforced even when libcurl drops its own timer", function()
    -- libcurl 7.88 loses the timeout when the connect timeout is handled
    -- less than a millisecond before it; lretry keeps a deadline of its own.
    for _ = 1, 10 do
      local t0 = retry.now()
      local e = fails("GET", h.url("/delay/10000"), { timeout = 0.3,
        connect_timeout = 0.299 })
      assert.equal("timeout", e.kind)
      assert.is_true(retry.now() - t0 < 1, retry.now() - t0)
    end
  end)

  it("timeout: the attempt took longer than timeout", function()
    local t0 = retry.now()
    local e = fails("GET", h.url("/delay/2000"), { timeout = 0.2 })
    assert.equal("timeout", e.kind)
    assert.is_true(retry.now() - t0 < 1.5)
  end)

  it("network: the server closed without answering", function()
    assert.equal("network", fails("GET", h.url("/close")).kind)
  end)

  it("tls: a TLS handshake with a plain HTTP server", function()
    assert.equal("tls", fails("GET", (h.url("/hello"):gsub("^http:", "https:"))).kind)
  end)

  it("invalid: bad arguments, before anything is sent", function()
    local key = h.key("invalid")
    for _, args in ipairs({
      { 42, h.url("/hello") },
      { "GET", nil },
      { "GET", h.url("/hello?key=" .. key), { headers = { ["Bad Name"] = "x" } } },
      { "GET", h.url("/hello?key=" .. key), { headers = { X = "a\r\nInjected: 1" } } },
      { "GET", h.url("/hello?key=" .. key), { data = 5 } },
      { "GET", h.url("/hello?key=" .. key), { timeout = -1 } },
      { "GET", h.url("/hello?key=" .. key), { auth = { "only-user" } } },
      { "GET", "ftp://127.0.0.1/" },
      { "GET", "not a url at all" },
    }) do
      run(function() expect.invalid(nil, retry.request, args[1], args[2], args[3]) end)
    end
    run(function() assert.equal(0, h.hits(retry, key)) end)
  end)
end)
