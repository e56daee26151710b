-- The example scripts run as smoke tests against the bundled server.
local h = require("helper")

local function lretry(args) return h.sh(h.lretry .. " " .. args) end

describe("scripts/", function()
  it("demo.lua retries flaky endpoints until all succeed", function()
    local code, out, err = lretry("scripts/demo.lua " .. h.base)
    assert.equal(0, code, err)
    assert.matches("attempt 3: GET [^\n]* %-> 200 OK", out)
    assert.matches("=> 200 OK after 3 attempts", out)
    assert.matches("=> all 100 succeeded", out)
  end)

  it("probe.lua prints a line per endpoint and exits 1 when one fails", function()
    local flaky = h.url("/fail?n=1&key=" .. h.key("probe"))
    local code, out = lretry(h.url("/hello"):gsub("^", "scripts/probe.lua ")
      .. " '" .. flaky .. "'")
    assert.equal(0, code)
    assert.matches("OK  +" .. h.url("/hello"):gsub("%p", "%%%0") .. " +200 OK, 1 attempt", out)
    assert.matches("200 OK, 2 attempts", out)
    assert.matches("2 endpoints, 0 failed", out)
    code, out = lretry("scripts/probe.lua " .. h.url("/status/404") .. " "
      .. h.url("/hello"))
    assert.equal(1, code)
    assert.matches("FAIL  [^\n]*404 Not Found", out)
    assert.matches("2 endpoints, 1 failed", out)
    assert.equal(2, (lretry("scripts/probe.lua")))
  end)

  it("custom_backoff.lua honours Retry-After and checks bodies in Lua", function()
    local code, out, err = lretry("scripts/custom_backoff.lua " .. h.base)
    assert.equal(0, code, err)
    assert.matches("waiting 0%.200 s", out)
    assert.matches("=> 200 after 3 attempts", out)
    assert.matches('=> 200, body {"ok":true,"hits":2}, after 2 attempts', out)
  end)
end)
