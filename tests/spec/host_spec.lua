-- The lretry host program (issue 2, point 5) and the build layout (point 1).
local h = require("helper")

local root = assert(io.popen("pwd")):read("l")
local lretry = h.lretry:sub(1, 1) == "/" and h.lretry or (root .. "/" .. h.lretry)

local function write(path, text)
  local f = assert(io.open(path, "w")); f:write(text); f:close()
end

local function script(text)
  local path = os.tmpname() .. ".lua"
  write(path, text)
  return path
end

describe("lretry", function()
  it("runs a script from any directory, inside retry.run, with arg", function()
    local path = script([[
      local retry = require("retry")
      local r = retry.request("GET", arg[1] .. "/hello")
      print(r.status, r:text():gsub("\n", ""), #arg, arg[2], arg[0] ~= nil)
    ]])
    local code, out, err = h.sh("cd / && " .. lretry .. " " .. path .. " "
      .. h.url("") .. " second")
    os.remove(path)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("200\thello\t2\tsecond\ttrue\n", out)
  end)

  it("runs -e code", function()
    local code, out = h.sh(lretry .. [[ -e 'require("retry").sleep(0.01) print("slept")']])
    assert.equal(0, code)
    assert.equal("slept\n", out)
  end)

  it("prints --version and --help", function()
    local code, out = h.sh(lretry .. " --version")
    assert.equal(0, code)
    assert.matches("^lretry %d+%.%d+%.%d+ %(Lua 5%.4", out)
    code, out = h.sh(lretry .. " --help")
    assert.equal(0, code)
    assert.matches("usage: lretry", out)
  end)

  it("exits 2 with usage on a bad command line", function()
    local code, _, err = h.sh(lretry .. " --bogus")
    assert.equal(2, code)
    assert.matches("unknown option", err)
    code, _, err = h.sh(lretry)
    assert.equal(2, code)
    assert.matches("^usage: lretry", err)
    -- Options and no script: named, not just the usage.
    code, _, err = h.sh(lretry .. " --json x.json")
    assert.equal(2, code)
    assert.matches("^lretry: no script to run", err)
  end)

  it("takes -- as the end of its options", function()
    local path = script([[print(arg[1], #arg)]])
    local code, out, err = h.sh(lretry .. " --quiet -- " .. path .. " -v")
    assert.equal(0, code, err)
    assert.equal("-v\t1\n", out)
  end)

  it("prints an uncaught error with a traceback and exits 1", function()
    local path = script([[
      local function inner() error("script failed here") end
      inner()
    ]])
    local code, out, err = h.sh(lretry .. " " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("script failed here", err)
    assert.matches("stack traceback:", err)
    assert.matches("in local 'inner'", err)
  end)

  it("prints an error object raised by a request", function()
    local code, _, err = h.sh(lretry .. [[ -e 'require("retry").request("GET", "http://127.0.0.1:1/")']])
    assert.equal(1, code)
    assert.matches("retry.connect error", err)
    assert.matches("stack traceback:", err)
    -- The embedded modules (precompiled by luac when the build has it)
    -- keep their debug information: the frames name file and line.
    assert.matches("retry/init%.lua:%d+: in function 'retry%.request'", err)
  end)

  it("reports a syntax error and exits 1", function()
    local path = script("local = 1")
    local code, _, err = h.sh(lretry .. " " .. path)
    os.remove(path)
    assert.equal(1, code)
    assert.matches("expected near '='", err)
  end)

  it("exits with os.exit's status", function()
    assert.equal(3, (h.sh(lretry .. " -e 'os.exit(3)'")))
    assert.equal(0, (h.sh(lretry .. " -e 'os.exit(true)'")))
  end)

  it("raises an error from a task nobody awaited", function()
    local code, _, err = h.sh(lretry .. [[ -e 'local r = require("retry")
      r.spawn(function() error("background failure") end)']])
    assert.equal(1, code)
    assert.matches("background failure", err)
  end)
end)

describe("the build", function()
  it("installs lretry and a module stock lua5.4 finds under the prefix", function()
    local prefix = os.tmpname()
    os.remove(prefix)
    local code, _, err = h.sh("cmake --install build --prefix " .. prefix)
    assert.equal(0, code, err)
    assert.is_truthy(io.open(prefix .. "/bin/lretry", "rb"))
    assert.is_truthy(io.open(prefix .. "/lib/lua/5.4/retry/core.so", "rb"))
    assert.is_truthy(io.open(prefix .. "/share/lua/5.4/retry/init.lua", "rb"))
    local out
    code, out = h.sh("cd / && LUA_PATH='" .. prefix .. "/share/lua/5.4/?.lua;"
      .. prefix .. "/share/lua/5.4/?/init.lua;;' LUA_CPATH='" .. prefix
      .. "/lib/lua/5.4/?.so;;' lua5.4 -e 'print(require(\"retry\")._VERSION)'")
    assert.equal(0, code)
    assert.matches("^lretry %d", out)
    h.sh("rm -rf " .. prefix)
  end)
end)
