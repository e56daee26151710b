--- The lretry commands that need no script: `lretry load`, `lretry probe`
-- and `lretry merge` (README, "Load checks"). main.c runs
-- `main(command, args...)` inside retry.run and exits with
-- retry.load's exit_status.
local client_mod = require("retry.client")
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local load = require("retry.load")
local result = require("retry.result")
local retry = require("retry")
local summary = require("retry.summary")
local values = require("retry.values")

local M = {}

M.USAGE = {
  load = [[
usage: lretry load URL [options]
Send requests to URL with retries and print a summary: counts by status and
error, checks, retries, attempts per request, latency percentiles.
  -c, --concurrency N   closed model: N requests at a time (default 10);
                        with -r: at most N in flight (default 1000);
                        at most 1000000
  -n, --requests N      send N requests in all
  -d, --duration TIME   send for TIME: 30 (seconds), 500ms, 10s, 2m
                        (default 10s when -n is not given)
      --grace TIME      after -d, let requests in flight finish for at
                        most TIME, then cancel them (default 10s; 0:
                        cancel them at once)
  -r, --rate R          open model: start R requests per second, however
                        slow the server is; latency counts from each
                        request's scheduled start
  -t, --threads N       run the load on N OS threads, each with its own
                        loop: -c and -r split between them, -n shared
                        (default 1; at most the concurrency); one
                        merged summary
  -m, --method METHOD   (default GET)
  -H, --header 'K: V'   add a request header (repeatable)
      --body DATA       request body; @FILE reads it from FILE
      --attempts N      attempts per request, first included (default 3)
      --strategy NAME   backoff: exponential (default), random, list,
                        fibonacci or jitter
      --timeout SECONDS each attempt's timeout (default 300)
      --cacert FILE     trust the certificates of this PEM file (https)
  -k, --insecure        do not verify the server's certificate (https)
      --expect CODES    check each response: its status is one of CODES
                        (comma separated, e.g. 200,204)
      --threshold NAME=LIMIT
                        fail (exit 2) when crossed (repeatable). NAME:
                        p50 p90 p99 p999 max mean (seconds, or 250ms),
                        error_rate (0.01 or 1%), retry_rate (at most);
                        check_rate (0.99 or 99%, with --expect), rps
                        (at least)
      --json FILE       write the figures as JSON (- for stdout)
      --quiet           no live progress line
  -h, --help            this help
Exit status: 0; 2 a threshold was crossed (or bad usage); 130 interrupted
by Ctrl-C, 143 by SIGTERM (the partial summary is printed and the JSON
written; a second one ends at once).
]],
  probe = [[
usage: lretry probe URL...
GET each URL once, with the default retry policy (3 attempts, exponential
backoff), all at once. One line per URL: OK or FAIL, status, attempts and
time. Exit status 1 when any URL failed (an error, or a status >= 400).
]],
  merge = [[
usage: lretry merge A.json B.json... [--json OUT] [--quiet]
                    [--threshold NAME=LIMIT]...
Add the results of `lretry load --json` (or result:to_json()) exactly, as
one run over all their requests: counts add, latency histograms merge and
percentiles come from the merged histogram; the duration is the longest.
Prints the merged summary (not with --quiet) and checks the inputs'
thresholds (the strictest limit where several have one; a --threshold
given here replaces the inputs' of that name) against the merged figures:
exit 2 when one is crossed, 1 when a file cannot be read or is not a load
result.
]],
}

local Usage = {}

-- A usage error: the message and where the help is, exit 2.
local function usage_error(command, message)
  error(setmetatable({ command = command, message = message }, Usage), 0)
end

--- Seconds from "30", "1.5", "500ms", "10s", "2m", "1h".
function M.parse_time(text)
  local number, unit = tostring(text):match("^(%d*%.?%d+)(%a*)$")
  local scale = ({ [""] = 1, s = 1, ms = 0.001, us = 1e-6, m = 60,
    h = 3600 })[unit or ""]
  if number == nil or scale == nil then return nil end
  return tonumber(number) * scale
end

local STRATEGIES = {
  exponential = function(n) return retry.ExponentialRetry{ attempts = n } end,
  random = function(n) return retry.RandomRetry{ attempts = n } end,
  fibonacci = function(n) return retry.FibonacciRetry{ attempts = n } end,
  jitter = function(n) return retry.JitterRetry{ attempts = n } end,
  -- 0.1, 0.2, 0.4 ... s, at most 30 s: the exponential default's waits.
  list = function(n)
    local timeouts = {}
    for i = 1, math.max(n - 1, 1) do
      timeouts[i] = math.min(0.1 * 2 ^ (i - 1), 30)
    end
    return retry.ListRetry{ timeouts = timeouts, attempts = n }
  end,
}
local MAX_ATTEMPTS = 100

-- Options that take a value, by their long name; short aliases.
local TAKES_VALUE = { concurrency = true, requests = true, duration = true,
  rate = true, method = true, header = true, body = true, attempts = true,
  strategy = true, timeout = true, expect = true, threshold = true,
  json = true, threads = true, cacert = true, grace = true }
local SHORT = { c = "concurrency", n = "requests", d = "duration",
  r = "rate", m = "method", H = "header", h = "help", t = "threads",
  k = "insecure" }
local FLAGS = { quiet = true, help = true, insecure = true }

-- argv -> options (repeatable ones as lists) and positional arguments.
local function parse(command, args)
  local opts, positional = { header = {}, threshold = {} }, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, value
    if a == "--" then
      table.move(args, i + 1, #args, #positional + 1, positional)
      break
    elseif a:sub(1, 2) == "--" then
      name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
    elseif a:sub(1, 1) == "-" and #a > 1 then
      name = SHORT[a:sub(2, 2)]
      if name == nil then usage_error(command, "unknown option " .. a) end
      if #a > 2 then value = a:sub(3) end
    else
      positional[#positional + 1] = a
      name = nil
    end
    if name then
      if FLAGS[name] then
        if value then usage_error(command, "--" .. name .. " takes no value") end
        opts[name] = true
      elseif TAKES_VALUE[name] then
        if value == nil then
          i = i + 1
          value = args[i]
          if value == nil then
            usage_error(command, "--" .. name .. " needs a value")
          end
        end
        if type(opts[name]) == "table" then
          table.insert(opts[name], value)
        else
          opts[name] = value
        end
      else
        usage_error(command, "unknown option --" .. name)
      end
    end
    i = i + 1
  end
  return opts, positional
end

-- A number as the options write one: decimal digits with an optional
-- fraction and exponent ("100", "0.5", "1e6"). Lua's tonumber alone would
-- also take "0x10", "inf" spelled as "1e999", and spaces.
local function decimal(text)
  local mantissa, exponent = text:match("^(%d*%.?%d*)([eE]?[+-]?%d*)$")
  if mantissa == nil or not mantissa:find("%d")
      or (exponent ~= "" and not exponent:find("^[eE][+-]?%d+$")) then
    return nil
  end
  local n = tonumber(text)
  if n == nil or n == math.huge then return nil end
  return n
end

local function integer_option(command, opts, name, min)
  local v = opts[name]
  if v == nil then return nil end
  local n = decimal(v)
  n = n and math.tointeger(n)
  if n == nil or n < min then
    usage_error(command, ("--%s must be an integer >= %d, got %q"):format(
      name, min, v))
  end
  return n
end

local function thresholds_of(command, list)
  local out = {}
  for _, t in ipairs(list) do
    local name, limit = t:match("^([%w_]+)=(.+)$")
    if name == nil then
      usage_error(command, ("--threshold must be NAME=LIMIT, got %q"):format(t))
    end
    local def = result.THRESHOLDS[name]
    if def == nil then
      usage_error(command, ("unknown threshold %q (known: %s)"):format(name,
        table.concat(result.THRESHOLD_NAMES, ", ")))
    end
    local value
    if def.unit == "seconds" then
      value = M.parse_time(limit)
    elseif def.unit == "ratio" and limit:find("^%d*%.?%d+%%$") then
      -- "0.7%" is read as 0.7e-2, the same number as "0.007" (dividing
      -- by 100 would not be).
      value = tonumber(limit:sub(1, -2) .. "e-2")
    else
      value = decimal(limit)
    end
    if value == nil then
      usage_error(command, ("--threshold %s: %q is not a %s"):format(name,
        limit, def.unit == "seconds" and "time (0.25, 250ms)"
          or def.unit == "ratio" and "ratio (0.01, or 1%)" or "number"))
    end
    if def.unit == "ratio" and value > 1 then
      usage_error(command, ("--threshold %s is a ratio from 0 to 1 "
        .. "(0.01, or 1%%), got %q"):format(name, limit))
    end
    if out[name] ~= nil then
      usage_error(command, ("--threshold %s is given twice: give each "
        .. "threshold once"):format(name))
    end
    out[name] = value
  end
  return out
end

local function read_body(command, body)
  if body == nil or body:sub(1, 1) ~= "@" then return body end
  local f, err = io.open(body:sub(2), "rb")
  if not f then usage_error(command, "--body: " .. err) end
  local data, read_err = f:read("a")
  f:close()
  if data == nil then
    usage_error(command, "--body: " .. body:sub(2) .. ": " .. tostring(read_err))
  end
  return data
end

local function headers_of(command, list)
  local headers = {}
  for _, h in ipairs(list) do
    local name, value = h:match("^([^:]+):%s*(.*)$")
    if name == nil then
      usage_error(command, ("-H must be 'Name: value', got %q"):format(h))
    end
    headers[name] = value
  end
  return headers
end

local function expect_check(command, codes)
  if codes == nil then return nil end
  local allowed = {}
  if not codes:find("%d") then
    usage_error(command, ("--expect needs status codes such as 200,204, "
      .. "got %q"):format(codes))
  end
  for code in codes:gmatch("[^,]+") do
    local n = tonumber(code:match("^%s*(%d+)%s*$"))
    if n == nil or n < 100 or n > 599 then
      usage_error(command, ("--expect: %q is not a status code"):format(code))
    end
    allowed[n] = true
  end
  return load.status_check(allowed)
end

local function run_load(args)
  local opts, positional = parse("load", args)
  if opts.help then io.write(M.USAGE.load); return 0 end
  if #positional ~= 1 then
    usage_error("load", #positional == 0 and "a URL is needed"
      or "one URL only, got " .. #positional)
  end
  local url = positional[1]
  if not url:lower():find("^https?://") then
    usage_error("load", ("the URL must start with http:// or https://, "
      .. "got %q"):format(url))
  end
  if not url:find("^%a+://[^/?#]") then
    usage_error("load", ("the URL has no host, got %q"):format(url))
  end
  local duration
  if opts.duration then
    duration = M.parse_time(opts.duration)
    if duration == nil then
      usage_error("load", ("-d must be a time such as 10s, got %q"):format(
        opts.duration))
    elseif duration <= 0 then
      usage_error("load", ("-d must be more than 0, got %q"):format(
        opts.duration))
    end
  end
  local grace
  if opts.grace then
    grace = M.parse_time(opts.grace)
    if grace == nil then
      usage_error("load", ("--grace must be a time such as 2s, got %q")
        :format(opts.grace))
    elseif opts.requests and not opts.duration then
      usage_error("load", "--grace needs -d: it is how long requests in "
        .. "flight may go on once the duration is over")
    end
  end
  local rate
  if opts.rate then
    rate = decimal(opts.rate)
    if rate == nil or rate <= 0 then
      usage_error("load", ("-r must be a number > 0, got %q"):format(
        opts.rate))
    elseif rate > load.MAX_RATE then
      usage_error("load", ("-r must be at most %d requests per second, "
        .. "got %q"):format(math.tointeger(load.MAX_RATE), opts.rate))
    end
  end
  local timeout
  if opts.timeout then
    timeout = M.parse_time(opts.timeout)
    if timeout == nil or timeout <= 0 then
      usage_error("load", ("--timeout must be seconds > 0, got %q"):format(
        opts.timeout))
    end
  end
  local strategy = STRATEGIES[opts.strategy or "exponential"]
  if strategy == nil then
    usage_error("load", ("--strategy must be exponential, random, list, "
      .. "fibonacci or jitter, got %q"):format(opts.strategy))
  end
  local concurrency = integer_option("load", opts, "concurrency", 1)
  if concurrency and concurrency > load.MAX_CONCURRENCY then
    usage_error("load", ("-c must be at most %d requests at a time, got %d")
      :format(load.MAX_CONCURRENCY, concurrency))
  end
  local threads = integer_option("load", opts, "threads", 1)
  if threads and threads > load.MAX_THREADS then
    usage_error("load", ("--threads must be at most %d, got %d"):format(
      load.MAX_THREADS, threads))
  end
  local cap = concurrency
    or (rate and load.DEFAULT_IN_FLIGHT or load.DEFAULT_CONCURRENCY)
  if threads and threads > cap then
    usage_error("load", ("--threads %d is more than the concurrency (%s%d): "
      .. "each thread runs at least one request at a time"):format(threads,
      concurrency and "-c " or "", cap))
  end
  local attempts = integer_option("load", opts, "attempts", 1) or 3
  if attempts > MAX_ATTEMPTS then
    usage_error("load", ("--attempts must be at most %d, got %d"):format(
      MAX_ATTEMPTS, attempts))
  end
  local method = (opts.method or "GET"):upper()
  local body = read_body("load", opts.body)
  local headers = headers_of("load", opts.header)
  -- What every request would be refused for, found before the load runs.
  local bad = core.check(http.make_spec(method, url, { headers = headers,
    data = body }))
  if bad then usage_error("load", bad) end
  if opts.cacert then values.check_readable(opts.cacert, "--cacert") end
  local thresholds = thresholds_of("load", opts.threshold)
  if thresholds.check_rate and not opts.expect then
    usage_error("load", "--threshold check_rate needs --expect: it is the "
      .. "share of responses with an expected status")
  end
  -- Headers go on the client: every request sends its table, made once.
  local client = retry.RetryClient{
    headers = headers,
    retry_options = strategy(attempts),
    -- No more than `cap` requests are ever in flight (the workers, or the
    -- open model's cap), one attempt each: a limit on the client would
    -- only cost each attempt a slot taken and given back.
    limit = 0,
    timeout = timeout,
    ca_file = opts.cacert,
    verify_tls = not opts.insecure,
  }
  -- The client and its strategy are this command's alone: their fields
  -- are checked once (client.prepare), not before every request.
  local send = client_mod.prepare(client, method, url,
    body and { data = body } or nil)
  local r = load.load{
    client = client, label = method .. " " .. url,
    request = send,
    check = expect_check("load", opts.expect), concurrency = concurrency,
    requests = integer_option("load", opts, "requests", 0),
    duration = duration, grace = grace, rate = rate, threads = threads,
    thresholds = thresholds,
    quiet = opts.quiet or nil, json = opts.json,
  }
  client:close()
  -- With --json - the JSON is the output; the summary goes to stderr.
  local out = opts.json == "-" and io.stderr or io.stdout
  out:write(r:summary())
  return load.exit_status
end

-- A usage error for any option given that is not in `allowed` (the
-- repeatable ones are empty lists when not given).
local function only_options(command, opts, allowed)
  for name, v in pairs(opts) do
    if not allowed[name] and not (type(v) == "table" and #v == 0) then
      usage_error(command, "--" .. name .. " does not apply to " .. command)
    end
  end
end

local function run_probe(args)
  local opts, urls = parse("probe", args)
  if opts.help then io.write(M.USAGE.probe); return 0 end
  if #urls == 0 then usage_error("probe", "give at least one URL") end
  only_options("probe", opts, {})
  local client <close> = retry.RetryClient{ timeout = 30,
    connect_timeout = 10 }
  local tasks = {}
  for i, url in ipairs(urls) do
    tasks[i] = retry.spawn(function()
      local t0 = retry.now()
      local ok, r = pcall(client.get, client, url)
      local elapsed = summary.time(retry.now() - t0)
      if not ok then
        local attempts = errors.is_error(r) and r.attempt or 1
        local tries = ("%d attempt%s"):format(attempts,
          attempts == 1 and "" or "s")
        if errors.is_error(r, "invalid") then tries = "not sent" end
        return false, ("FAIL  %s  %s, %s, %s"):format(url,
          errors.is_error(r) and r.kind .. " error: " .. r.message
            or tostring(r), tries, elapsed)
      end
      r:close()
      return r.ok, ("%s  %s  %d %s, %d attempt%s, %s"):format(
        r.ok and "OK  " or "FAIL", url, r.status, r.reason, r.attempts,
        r.attempts == 1 and "" or "s", elapsed)
    end)
  end
  local failed = 0
  for _, t in ipairs(tasks) do
    local ok, line = t:await()
    print(line)
    if not ok then failed = failed + 1 end
  end
  print(("%d URL%s, %d failed"):format(#urls, #urls == 1 and "" or "s",
    failed))
  return failed == 0 and 0 or 1
end

local function run_merge(args)
  local opts, files = parse("merge", args)
  if opts.help then io.write(M.USAGE.merge); return 0 end
  if #files == 0 then usage_error("merge", "give the JSON files to merge") end
  only_options("merge", opts, { json = true, quiet = true, threshold = true })
  local limits = thresholds_of("merge", opts.threshold)
  local results = {}
  for i, path in ipairs(files) do
    local f, err = io.open(path, "rb")
    if not f then
      io.stderr:write("lretry merge: ", err, "\n")
      return 1
    end
    local text, read_err = f:read("a")
    f:close()
    if text == nil then
      io.stderr:write("lretry merge: ", path, ": ", tostring(read_err), "\n")
      return 1
    end
    local ok, r = pcall(result.from_json, text, path)
    if not ok then
      io.stderr:write("lretry merge: ", tostring(r.message or r), "\n")
      return 1
    end
    results[i] = r
  end
  local merged = result.merge(results, limits)
  if opts.json then
    local written, err = pcall(load.write_json, merged, opts.json,
      "lretry merge")
    if not written then
      io.stderr:write(tostring(err.message or err), "\n")
      return 1
    end
  end
  if not opts.quiet then
    local out = opts.json == "-" and io.stderr or io.stdout
    out:write(merged:summary())
  end
  return merged.ok and 0 or 2
end

local COMMANDS = { load = run_load, probe = run_probe, merge = run_merge }

local function run(command, args)
  local ok, status = pcall(COMMANDS[command], args)
  if ok then return status end
  if getmetatable(status) == Usage then
    io.stderr:write("lretry ", status.command, ": ", status.message,
      "\n(lretry ", status.command, " --help shows the options)\n")
    return 2
  end
  if errors.is_error(status, "invalid") then
    io.stderr:write("lretry ", command, ": ", status.message, "\n")
    return 2
  end
  -- A message lretry raised on purpose (with no file:line before it: a
  -- thread that failed, memory that ran out) is the whole story; a
  -- traceback is for an error in lretry's own code. In a worker thread
  -- the error fails the thread, and the main thread tells why.
  if type(status) == "string" and not load.worker
    and not status:match("^[^:\n]+:%d+: ") then
    io.stderr:write("lretry ", command, ": ", status, "\n")
    return 1
  end
  error(status, 0)
end

--- Run `command` with its arguments. The exit status goes where the host
-- reads it: retry.load's exit_status.
function M.main(command, ...)
  local args = table.pack(...)
  load.exit_status = run(command, { table.unpack(args, 1, args.n) })
end

M.COMMANDS = COMMANDS
return M
