-- What the server receives (contract section 7), counted at the server:
-- hits, connections and peak concurrency per key, against the bundled
-- server's HTTP port and its fault port (a raw socket server that resets,
-- closes and answers with what is not HTTP on purpose).
local retry = require("retry")
local h = require("helper")
local expect = require("expect")

local function run(f) return retry.run(f) end

local function once(o)
  o = o or {}
  o.attempts = o.attempts or 1
  o.start_timeout = o.start_timeout or 0.001
  return retry.ExponentialRetry(o)
end

-- A URL on the HTTP port with a fresh counter key; returns url, key.
local function keyed(path)
  local key = h.key("wire")
  return h.url(path .. (path:find("?", 1, true) and "&" or "?") .. "key="
    .. key), key
end

local function fault_keyed(path)
  local key = h.key("fault")
  return h.fault_url(path .. (path:find("?", 1, true) and "&" or "?")
    .. "key=" .. key), key
end

-- n kept-alive connections to the server, made by n requests at once.
local function warm(client, n, url)
  local tasks = {}
  for i = 1, n do
    tasks[i] = retry.spawn(function() return client:get(url).status end)
  end
  for _, status in ipairs(retry.gather(tasks)) do assert.equal(200, status) end
end

describe("re-sends", function()
  it("a POST on a dead kept-alive connection reaches the server once", function()
    run(function()
      local client = retry.RetryClient{ retry_options = once() }
      warm(client, 4, h.url("/hello"))
      local url, key = keyed("/close?n=100")
      local err = expect.raises("network", client.post, client, url,
        { data = "payload" })
      assert.equal(1, h.counts(retry, key).hits)
      assert.equal(1, err.attempt)
      assert.matches("not idempotent", err.message)
    end)
  end)

  it("a GET on a dead kept-alive connection is re-sent once, and says so", function()
    run(function()
      local client = retry.RetryClient{ retry_options = once() }
      warm(client, 4, h.url("/hello"))
      local url, key = keyed("/close?n=100")
      local err = expect.raises("network", client.get, client, url)
      assert.equal(2, h.counts(retry, key).hits)
      assert.is_true(err.resent)
      assert.is_true(err.history[1].resent)
    end)
  end)

  it("a GET re-sent on a new connection after a reset gets its response", function()
    run(function()
      local client = retry.RetryClient{ retry_options = once() }
      local url, key = fault_keyed("/reset-second?answer=1")
      assert.equal(200, client:get(url).status)
      local r = client:get(url)
      assert.equal(200, r.status)
      assert.equal("ok\n", r:text())
      assert.is_true(r.resent)
      assert.is_true(r.history[1].resent)
      assert.equal(1, r.attempts)
      local c = h.counts(retry, key)
      assert.equal(3, c.hits)
      assert.equal(2, c.connections)
    end)
  end)

  it("a POST after a reset is left to the retry policy, in the open", function()
    -- Each run starts with no kept-alive connection (none outlives a run).
    local url, key = fault_keyed("/reset-second?answer=1")
    run(function()
      local client = retry.RetryClient{ retry_options = once() }
      assert.equal(200, client:post(url, { data = "a" }).status)
      local err = expect.raises("network", client.post, client, url,
        { data = "b" })
      assert.matches("not idempotent, so it was not sent again", err.message)
      assert.equal(42, err.curl_code)
      assert.equal(2, h.counts(retry, key).hits)
    end)
    -- with two attempts the policy sends it again, and history says so
    run(function()
      local client = retry.RetryClient{ retry_options = once{ attempts = 2 } }
      assert.equal(200, client:post(url, { data = "c" }).status)
      local r = client:post(url, { data = "d" })
      assert.equal(200, r.status)
      assert.equal(2, r.attempts)
      assert.equal("network", r.history[1].error.kind)
      assert.is_nil(r.history[1].resent)
      assert.equal(200, r.history[2].status)
      assert.equal(5, h.counts(retry, key).hits)
    end)
  end)

  it("PUT and DELETE are idempotent, PATCH is not", function()
    for method, resent in pairs({ PUT = true, DELETE = true, PATCH = false }) do
      local url, key = fault_keyed("/reset-second?answer=1")
      run(function()
        local client = retry.RetryClient{ retry_options = once() }
        assert.equal(200, client:request(method, url, { data = "x" }).status)
        local ok, r = pcall(client.request, client, method, url, { data = "y" })
        assert.equal(resent, ok, method)
        if ok then assert.is_true(r.resent) end
        assert.equal(resent and 3 or 2, h.counts(retry, key).hits, method)
      end)
    end
  end)
end)

describe("after a connection fault", function()
  it("the retry goes out on a new connection and reaches the server", function()
    -- /reply-then-reset resets every connection right after its reply;
    -- libcurl 7.88 takes such an idle connection for alive.
    local url, key = fault_keyed("/reply-then-reset")
    local attempts, failed = 0, 0
    run(function()
      local client = retry.RetryClient{ retry_options = once{ attempts = 2 } }
      for _ = 1, 3 do
        local tasks = {}
        for i = 1, 50 do
          tasks[i] = retry.spawn(function()
            local ok, r = pcall(client.post, client, url, { data = "x" })
            if ok then attempts = attempts + r.attempts else failed = failed + 1 end
          end)
        end
        retry.gather(tasks)
        retry.sleep(0.05)
      end
      for _ = 1, 10 do
        local r = client:post(url, { data = "y" })
        attempts = attempts + r.attempts
        retry.sleep(0.05)
      end
    end)
    assert.equal(0, failed)
    -- every request reached the server once; the first attempts that found
    -- a dead connection did not
    local hits = run(function() return h.counts(retry, key).hits end)
    assert.equal(160, hits)
    assert.is_true(attempts >= hits)
  end)
end)

describe("connection faults", function()
  it("a complete response followed by a reset is a response, every time", function()
    run(function()
      for _ = 1, 20 do
        local r = retry.request("GET", h.fault_url("/reply-then-reset"))
        assert.equal(200, r.status)
        assert.equal("ok\n", r:text())
      end
    end)
  end)

  it("a reset on a kept-alive connection does not fail the next request", function()
    run(function()
      for _ = 1, 3 do
        local url = fault_keyed("/reset-second?answer=1")
        assert.equal(200, retry.request("GET", url).status)
        assert.equal(200, retry.request("GET", url).status)
      end
    end)
  end)
end)

describe("connections", function()
  -- The sockets this process holds open.
  local function open_sockets()
    local pid = assert(io.open("/proc/self/stat")):read("n")
    local _, out = h.sh("ls -l /proc/" .. pid .. "/fd")
    local n = 0
    for _ in out:gmatch("socket:%[") do n = n + 1 end
    return n
  end

  it("a steady load opens as many connections as it has in flight", function()
    local url, key = keyed("/hello")
    run(function()
      local client = retry.RetryClient()
      local tasks = {}
      for i = 1, 8 do
        tasks[i] = retry.spawn(function()
          for _ = 1, 150 do assert.equal(200, client:get(url).status) end
        end)
      end
      retry.gather(tasks)
      local c = h.counts(retry, key)
      assert.equal(1200, c.hits)
      assert.equal(8, c.connections)
    end)
  end)

  it("no connection outlives retry.run", function()
    local before = open_sockets()
    run(function()
      local tasks = {}
      for i = 1, 50 do
        tasks[i] = retry.spawn(function()
          return retry.request("GET", h.url("/delay/50")).status
        end)
      end
      retry.gather(tasks)
      assert.is_true(open_sockets() >= before + 50)
    end)
    assert.equal(before, open_sockets())
  end)
end)

describe("connection limits", function()
  local function burst(client, n, url)
    local tasks = {}
    for i = 1, n do
      tasks[i] = retry.spawn(function() return client:get(url) end)
    end
    return retry.gather(tasks)
  end

  it("limit caps the attempts in flight; 100 by default; 0 for none", function()
    run(function()
      local url, key = keyed("/delay/100")
      burst(retry.RetryClient{ limit = 5 }, 20, url)
      assert.equal(5, h.counts(retry, key).peak)
      url, key = keyed("/delay/300")
      burst(retry.RetryClient(), 130, url)
      assert.equal(100, h.counts(retry, key).peak)
      url, key = keyed("/delay/300")
      burst(retry.RetryClient{ limit = 0 }, 130, url)
      assert.equal(130, h.counts(retry, key).peak)
    end)
  end)

  it("limit_per_host takes one origin however it is spelled", function()
    run(function()
      local client = retry.RetryClient{ limit_per_host = 2 }
      local url, key = keyed("/delay/100")
      local spellings = { url, url:gsub("^http://", "HTTP://"),
        url:gsub("://", "://user:pw@") }
      local tasks = {}
      for i = 1, 9 do
        local u = spellings[i % 3 + 1]
        tasks[i] = retry.spawn(function() return client:get(u) end)
      end
      retry.gather(tasks)
      local c = h.counts(retry, key)
      assert.equal(9, c.hits)
      assert.equal(2, c.peak)
    end)
  end)

  it("limit_per_host caps each origin on its own", function()
    run(function()
      local client = retry.RetryClient{ limit_per_host = 3 }
      local a, ka = keyed("/delay/100")
      local b, kb = keyed("/delay/100")
      b = b:gsub("127%.0%.0%.1", "localhost")
      local tasks = {}
      for i = 1, 10 do
        tasks[#tasks + 1] = retry.spawn(function() return client:get(a) end)
        tasks[#tasks + 1] = retry.spawn(function() return client:get(b) end)
      end
      retry.gather(tasks)
      assert.equal(3, h.counts(retry, ka).peak)
      assert.equal(3, h.counts(retry, kb).peak)
      assert.equal(10, h.counts(retry, kb).hits)
    end)
  end)

  it("waiting for a slot counts toward neither the timeout nor elapsed", function()
    run(function()
      local client = retry.RetryClient{ limit = 1, timeout = 0.5 }
      local rs = burst(client, 3, h.url("/delay/250"))
      local queued = 0
      for _, r in ipairs(rs) do
        assert.equal(200, r.status)
        assert.is_true(r.history[1].elapsed < 0.45, r.history[1].elapsed)
        queued = math.max(queued, r.history[1].queued or 0)
      end
      assert.is_true(queued >= 0.45, queued)
    end)
  end)

  it("a task cancelled while waiting gives up its place", function()
    run(function()
      local client = retry.RetryClient{ limit = 1 }
      local url, key = keyed("/delay/100")
      local a = retry.spawn(function() return client:get(url) end)
      local b = retry.spawn(function() return client:get(url) end)
      local c = retry.spawn(function() return client:get(url) end)
      retry.sleep(0.02)
      b:cancel()
      expect.raises("cancelled", b.await, b)
      assert.equal(200, a:await().status)
      assert.equal(200, c:await().status)
      local counts = h.counts(retry, key)
      assert.equal(2, counts.hits)
      assert.equal(1, counts.peak)
    end)
  end)
end)

describe("redirects", function()
  -- Follow a `code` redirect to /echo with `method` and a body; returns
  -- the method and body the echo saw, and the response.
  local function via(code, method, opts)
    local target = h.url("/echo")
    local url = h.url("/redirect?code=" .. code .. "&to="
      .. target:gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end))
    local r = retry.request(method, url, opts or { data = "the body" })
    if method == "HEAD" then return "HEAD", nil, r end
    local e = r:json()
    return e.method, e.body, r
  end

  it("303 becomes GET without a body, except for HEAD", function()
    run(function()
      for _, m in ipairs({ "POST", "PUT", "PATCH", "DELETE" }) do
        local method, body, r = via(303, m)
        assert.equal("GET", method, m)
        assert.equal("", body, m)
        assert.equal("GET", r.method)
        assert.equal(1, r.redirects)
      end
      local _, _, r = via(303, "HEAD", {})
      assert.equal("HEAD", r.method)
      assert.equal(200, r.status)
    end)
  end)

  it("301 and 302 turn POST into GET, keep other methods with their body", function()
    run(function()
      for _, code in ipairs({ 301, 302 }) do
        local method, body = via(code, "POST")
        assert.equal("GET", method)
        assert.equal("", body)
        for _, m in ipairs({ "PUT", "PATCH", "DELETE" }) do
          method, body = via(code, m)
          assert.equal(m, method, code .. " " .. m)
          assert.equal("the body", body, code .. " " .. m)
        end
      end
    end)
  end)

  it("307 and 308 keep method and body", function()
    run(function()
      for _, code in ipairs({ 307, 308 }) do
        for _, m in ipairs({ "POST", "PUT", "PATCH", "DELETE" }) do
          local method, body = via(code, m)
          assert.equal(m, method)
          assert.equal("the body", body)
        end
      end
    end)
  end)

  it("a 303 drops the body's Content-Type with the body", function()
    run(function()
      local _, _, r = via(303, "POST", { json = { a = 1 } })
      assert.is_nil(r:json().headers["content-type"])
    end)
  end)

  it("credentials are not sent to another origin", function()
    run(function()
      local function echoed(target)
        local url = h.url("/redirect?code=302&to=" .. target:gsub("[^%w]",
          function(c) return ("%%%02X"):format(c:byte()) end))
        return retry.request("GET", url, { auth = { "u", "p" },
          headers = { Cookie = "session=1" } }):json().headers
      end
      local same = echoed(h.url("/echo"))
      assert.matches("^Basic ", same.authorization)
      assert.equal("session=1", same.cookie)
      local other = echoed(h.url("/echo"):gsub("127%.0%.0%.1", "localhost"))
      assert.is_nil(other.authorization)
      assert.is_nil(other.cookie)
    end)
  end)

  it("max_redirects: 10 by default, then a redirect error, not retried", function()
    run(function()
      local url, key = keyed("/loop/0")
      local client = retry.RetryClient{ retry_options = retry.ExponentialRetry{
        attempts = 3, start_timeout = 0.001 } }
      local err = expect.raises("redirect", client.get, client, url)
      assert.matches("more than 10 redirects", err.message)
      assert.equal(47, err.curl_code)
      assert.equal(11, h.counts(retry, key).hits)
    end)
  end)

  it("max_redirects per call and per client; 0 returns the 3xx", function()
    run(function()
      local url, key = keyed("/loop/0")
      local r = retry.request("GET", url, { max_redirects = 0 })
      assert.equal(302, r.status)
      assert.matches("/loop/1", r.headers.location)
      assert.equal(1, h.counts(retry, key).hits)
      url, key = keyed("/loop/0")
      local client = retry.RetryClient{ max_redirects = 2 }
      expect.raises("redirect", client.get, client, url)
      assert.equal(3, h.counts(retry, key).hits)
      url, key = keyed("/loop/0")
      expect.raises("redirect", client.get, client, url, { max_redirects = 1 })
      assert.equal(2, h.counts(retry, key).hits)
    end)
  end)

  it("a redirect to another scheme is a redirect error", function()
    run(function()
      local err = expect.raises("redirect", retry.request, "GET",
        h.url("/redirect?to=ftp%3A%2F%2F127.0.0.1%2Fx"))
      assert.matches("not http or https", err.message)
    end)
  end)

  it("a redirect to a URL libcurl cannot parse is a redirect error", function()
    run(function()
      local err = expect.raises("redirect", retry.request, "GET",
        h.url("/redirect?to=http%3A%2F%2F127.0.0.1%3A99999%2Fx"))
      assert.matches("malformed", err.message)
      assert.equal(3, err.curl_code)
    end)
  end)

  it("the timeout covers the whole chain of redirects", function()
    run(function()
      local t0 = retry.now()
      local to = h.url("/delay/400"):gsub("[^%w]",
        function(c) return ("%%%02X"):format(c:byte()) end)
      local url = h.url("/redirect?to=" .. to)
      -- first hop fast, second slow: 0.3 s in all is not enough
      expect.raises("timeout", retry.request, "GET", url, { timeout = 0.3 })
      assert.is_true(retry.now() - t0 < 0.39)
    end)
  end)
end)

describe("checks before sending", function()
  it("refuse a method that is not an HTTP token, sending nothing", function()
    run(function()
      local url, key = keyed("/echo")
      for _, m in ipairs({ "GET /admin HTTP/1.1\r\nX-Injected: yes\r\nX:",
        "GET X", "GE\0T", "G\tET", "GET\n" }) do
        expect.invalid("method must be an HTTP token", retry.request, m, url)
        local client = retry.RetryClient()
        expect.invalid("method must be an HTTP token", client.request, client,
          m, url)
      end
      assert.equal(0, h.counts(retry, key).hits)
    end)
  end)

  it("refuse URLs with spaces, control characters or NUL, or not http(s)", function()
    run(function()
      local url, key = keyed("/echo")
      for _, u in ipairs({ url .. " x", url .. "\r\nX: y", url .. "\0/other",
        url:gsub("^http", "ftp"), "127.0.0.1/x", url .. "\127" }) do
        expect.invalid("url must", retry.request, "GET", u)
      end
      local client = retry.RetryClient()
      expect.invalid("attempt 2: url must", client.get, client,
        { url, url .. " x" })
      expect.invalid("attempt 2: url is malformed", client.get, client,
        { url, "http://127.0.0.1:99999/x" })
      expect.invalid("base_url: url is malformed", retry.RetryClient,
        { base_url = "http://127.0.0.1:99999" })
      assert.equal(0, h.counts(retry, key).hits)
    end)
  end)

  it("refuse bad header names and values", function()
    run(function()
      local url, key = keyed("/echo")
      for _, hd in ipairs({ { ["Bad Name"] = "x" }, { ["X:Y"] = "x" },
        { [""] = "x" }, { X = "a\r\nInjected: 1" }, { X = "a\0b" },
        { ["X\0"] = "v" }, { X = "a\nb" } }) do
        expect.invalid("header", retry.request, "GET", url, { headers = hd })
        expect.invalid("header", retry.RetryClient, { headers = hd })
        local client = retry.RetryClient()
        expect.invalid("header", client.get, client, url, { headers = hd })
      end
      assert.equal(0, h.counts(retry, key).hits)
    end)
  end)

  it("refuse Content-Length and Transfer-Encoding: the body sets them", function()
    run(function()
      local url, key = keyed("/echo")
      local client = retry.RetryClient()
      for _, name in ipairs({ "Content-Length", "content-length",
        "Transfer-Encoding" }) do
        expect.invalid("set from the body", client.post, client, url,
          { headers = { [name] = "1" },
            data = "xGET /status/418 HTTP/1.1\r\nHost: a\r\n\r\n" })
      end
      assert.equal(0, h.counts(retry, key).hits)
      -- and the connection stays in step: the next request gets its own reply
      assert.equal(200, client:get(h.url("/hello")).status)
    end)
  end)

  it("refuse auth together with an Authorization header, or with url credentials", function()
    run(function()
      local url, key = keyed("/echo")
      expect.invalid("auth and an Authorization header", retry.request, "GET",
        url, { auth = { "u", "p" }, headers = { authorization = "Bearer x" } })
      local client = retry.RetryClient{ headers = { Authorization = "Bearer x" } }
      expect.invalid("auth and an Authorization header", client.get, client,
        url, { auth = { "u", "p" } })
      expect.invalid("credentials in the url", retry.request, "GET",
        url:gsub("://", "://me:pw@"), { auth = { "u", "p" } })
      assert.equal(0, h.counts(retry, key).hits)
    end)
  end)

  it("retry.request refuses unknown options", function()
    run(function()
      expect.invalid("unknown option \"retries\"", retry.request, "GET",
        h.url("/hello"), { retries = 3 })
    end)
  end)
end)

describe("max_body_size", function()
  it("ends the attempt with too_large, announced or counted, not retried", function()
    run(function()
      local client = retry.RetryClient{ max_body_size = 1000 }
      local url, key = keyed("/bytes/1001")
      local err = expect.raises("too_large", client.get, client, url)
      assert.equal(23, err.curl_code)
      assert.matches("announced", err.message)
      assert.equal(1, h.counts(retry, key).hits)
      assert.equal(200, client:get(h.url("/bytes/1000")).status)
      local furl, fkey = fault_keyed("/chunked?size=5000")
      err = expect.raises("too_large", client.get, client, furl)
      assert.equal(23, err.curl_code)
      assert.matches("max_body_size %(1000 bytes%)", err.message)
      assert.equal(1, h.counts(retry, fkey).hits)
      -- per call, and math.huge for no limit
      assert.equal(5000, #client:get(h.fault_url("/chunked?size=5000"),
        { max_body_size = math.huge }):text())
      expect.raises("too_large", retry.request, "GET",
        h.fault_url("/chunked?size=5000"), { max_body_size = 10 })
    end)
  end)

  it("does not apply to the body of a redirect that is followed", function()
    run(function()
      -- the 302's body, "redirecting to /hello\n", is longer than 16 bytes
      local r = retry.request("GET", h.url("/redirect?to=%2Fhello"),
        { max_body_size = 16 })
      assert.equal("hello\n", r:text())
      assert.equal(1, r.redirects)
      -- but it does to a 3xx that is the response
      expect.raises("too_large", retry.request, "GET",
        h.url("/redirect?to=%2Fhello"), { max_body_size = 16, max_redirects = 0 })
    end)
  end)

  it("does not apply to HEAD, which has no body", function()
    run(function()
      local r = retry.request("HEAD", h.fault_url("/bytes?size=100000000"),
        { max_body_size = 1000 })
      assert.equal(200, r.status)
      assert.equal("100000000", r.headers["content-length"])
    end)
  end)

  it("is 64 MiB by default", function()
    run(function()
      assert.equal(64 * 1024 * 1024,
        #retry.request("GET", h.fault_url("/bytes?size=67108864")):text())
      expect.raises("too_large", retry.request, "GET",
        h.fault_url("/chunked?size=67108865"))
    end)
  end)
end)

describe("TLS", function()
  it("verifies by default, takes a ca_file, and verify_tls = false", function()
    run(function()
      local err = expect.raises("tls", retry.request, "GET", h.tls_url("/hello"))
      assert.equal(60, err.curl_code)
      local client = retry.RetryClient{ ca_file = h.tls_ca }
      assert.equal("hello\n", client:get(h.tls_url("/hello")):text())
      local unsafe = retry.RetryClient{ verify_tls = false }
      assert.equal(200, unsafe:get(h.tls_url("/hello")).status)
      assert.equal(200, retry.request("GET", h.tls_url("/hello"),
        { ca_file = h.tls_ca }).status)
    end)
  end)

  it("names a ca_file that cannot be read: missing, empty or a directory", function()
    local empty = os.tmpname()
    for _, path in ipairs({ "/no/such.pem", "/tmp", empty }) do
      expect.invalid("ca_file .* cannot be read", retry.RetryClient,
        { ca_file = path })
      run(function()
        expect.invalid("ca_file .* cannot be read", retry.request, "GET",
          h.tls_url("/hello"), { ca_file = path })
      end)
    end
    os.remove(empty)
  end)

  it("a CA file that is not a certificate is a tls error", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("not a certificate\n")
    f:close()
    run(function()
      local err = expect.raises("tls", retry.request, "GET", h.tls_url("/hello"),
        { ca_file = path })
      assert.equal(77, err.curl_code)
    end)
    os.remove(path)
  end)
end)

describe("error kinds", function()
  -- One case per row of the kinds table that can be made to happen here.
  local function kind_of(url, opts, method)
    return run(function()
      local ok, err = pcall(retry.request, method or "GET", url, opts)
      assert.is_false(ok, url)
      assert.is_true(retry.is_error(err), tostring(err))
      return err
    end)
  end

  local cases = {
    { "connect", 7, "http://127.0.0.1:1/" },
    { "connect", 28, function() return h.blackhole .. "/" end,
      { connect_timeout = 0.2 } },
    { "dns", 6, "http://no-such-host.invalid/" },
    { "timeout", 28, function() return h.url("/delay/2000") end,
      { timeout = 0.2 } },
    { "network", 52, function() return h.url("/close?n=100") end },
    { "network", 18, function() return h.fault_url("/partial") end },
    { "network", 55, function() return h.fault_url("/reset-upload") end,
      { data = string.rep("x", 8 * 1024 * 1024) }, "POST", 56 },
    { "protocol", 1, function() return h.fault_url("/not-http") end },
    { "protocol", 1, function() return h.fault_url("/bad-version") end },
    { "protocol", 8, function() return h.fault_url("/no-colon") end },
    { "protocol", 61, function() return h.fault_url("/bad-gzip") end },
    { "protocol", 27, function() return h.fault_url("/big-header?size=2097152") end },
    { "too_large", 23, function() return h.url("/bytes/100") end,
      { max_body_size = 10 } },
    { "too_large", 23, function() return h.fault_url("/chunked?size=100") end,
      { max_body_size = 10 } },
    { "redirect", 47, function() return h.url("/loop/0") end,
      { max_redirects = 1 } },
    { "tls", 35, function() return h.url("/hello"):gsub("^http:", "https:") end },
    { "tls", 60, function() return h.tls_url("/hello") end },
    { "invalid", 3, "http://[::1/" },
  }

  for _, c in ipairs(cases) do
    local kind, code, url, opts, method, alt = c[1], c[2], c[3], c[4], c[5], c[6]
    it(kind .. " for libcurl code " .. code, function()
      if type(url) == "function" then url = url() end
      local err = kind_of(url, opts, method)
      assert.equal(kind, err.kind, tostring(err))
      if alt then
        assert.is_true(err.curl_code == code or err.curl_code == alt,
          tostring(err.curl_code))
      else
        assert.equal(code, err.curl_code, tostring(err))
      end
    end)
  end

  it("protocol, redirect and too_large are not retried by default", function()
    run(function()
      local client = retry.RetryClient{ retry_options = retry.ExponentialRetry{
        attempts = 3, start_timeout = 0.001 } }
      for _, path in ipairs({ "/not-http", "/no-colon" }) do
        local url, key = fault_keyed(path)
        local err = expect.raises("protocol", client.get, client, url)
        assert.equal(1, err.attempt)
        assert.equal(1, h.counts(retry, key).hits)
      end
    end)
  end)
end)
