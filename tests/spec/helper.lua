--- Shared by the specs: where the bundled test server listens, and small
-- helpers. scripts/test.sh starts the server and sets LRETRY_TEST_URL.
local M = {}

M.base = os.getenv("LRETRY_TEST_URL")
assert(M.base, "LRETRY_TEST_URL is not set: run the specs with scripts/test.sh "
  .. "(it starts tests/server and sets it)")

-- The server's other ports (scripts/server.sh sets these too): the raw
-- port that misbehaves on purpose, the port whose connects never complete,
-- and the HTTP routes over TLS with the certificate to trust as a CA.
M.fault = os.getenv("LRETRY_FAULT_URL")
M.blackhole = os.getenv("LRETRY_BLACKHOLE_URL")
M.tls = os.getenv("LRETRY_TLS_URL")
M.tls_ca = os.getenv("LRETRY_TLS_CA")

--- Full URL of a server path.
function M.url(path) return M.base .. path end

local function need(value, var)
  return assert(value, var .. " is not set: run the specs with scripts/test.sh")
end

--- Full URL of a path on the fault port.
function M.fault_url(path) return need(M.fault, "LRETRY_FAULT_URL") .. path end

--- Full URL of a path on the TLS port (trust M.tls_ca to reach it).
function M.tls_url(path) return need(M.tls, "LRETRY_TLS_URL") .. path end

local counter = 0
--- A key unique to this process, for the server's per-key hit counters.
function M.key(name)
  counter = counter + 1
  return string.format("%s-%d-%d-%d", name, os.time(), counter,
    math.random(1, 1e9))
end

--- The server's hit count for key (read with a plain request).
-- A URL on the bundled server for path with a fresh ?key= added, and the
-- key, so the server counts this test's requests apart.
function M.counted(path, name)
  local key = M.key(name)
  return M.url(path .. (path:find("?", 1, true) and "&" or "?") .. "key="
    .. key), key
end

function M.hits(retry, key)
  local r <close> = retry.request("GET", M.url("/hits"), { params = { key = key } })
  return r:json().hits
end

--- hits for key once the server has caught up: a request cancelled just
-- after it went out reaches the server's parser a moment later, on a
-- connection of its own, than the /hits request asking about it. Reads
-- until two reads 50 ms apart agree, so a count too high fails as surely
-- as one too low.
function M.settled_hits(retry, key)
  local last = M.hits(retry, key)
  while true do
    retry.sleep(0.05)
    local now = M.hits(retry, key)
    if now == last then return now end
    last = now
  end
end

--- The server's whole counter record for key, as /hits returns it:
-- { key = key, hits = N, peak = P, connections = C, aborted = A }. hits
-- counts requests, peak the most in flight at once, connections the
-- distinct TCP connections that carried the key (on every port), aborted
-- the requests whose client closed or reset the connection before the
-- reply was sent (HTTP and TLS ports only; /delay sees it within a few
-- ms, while it sleeps). All are 0 for a key never seen.
function M.counts(retry, key)
  local r <close> = retry.request("GET", M.url("/hits"),
    { params = { key = key } })
  return r:json()
end

--- Run a shell command; returns exit code, stdout, stderr.
function M.sh(cmd)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(cmd .. " >" .. out .. " 2>" .. err)
  local function slurp(p)
    local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close()
    os.remove(p)
    return s
  end
  if how == "signal" then code = 128 + code end
  return ok and 0 or code, slurp(out), slurp(err)
end

M.lretry = os.getenv("LRETRY_BIN") or "build/lretry"

--- `s` quoted for the shell.
function M.quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Run lretry with `args` (shell words); returns exit code, stdout, stderr.
function M.run_lretry(args) return M.sh(M.lretry .. " " .. args) end

--- A file's whole contents.
function M.slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- `text` written to a new temporary file; returns its path.
function M.write_script(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

--- The repository root (busted runs from it).
M.root = assert(io.popen("pwd")):read("l")

return M
