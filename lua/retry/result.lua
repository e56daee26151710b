--- The figures of a load check (contract section 9): a Recorder that the
-- runner feeds with every attempt and every finished request, and the
-- Result it makes: figures, thresholds, JSON both ways, and exact merging
-- (counts add, histograms merge, percentiles come from the merged
-- histogram). Latency lives in C histograms (core.histogram): constant
-- memory, relative error under 1%. The text summary is summary.lua's.
local core = require("retry.core")
local errors = require("retry.errors")
local json = require("retry.json")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe

M.SCHEMA = "lretry.load/1"

--- A request that starts this many seconds after its scheduled time (open
-- model) is counted as late: the runner could not keep up.
M.LATE_AFTER = 0.01

local PERCENTILES = { { "p50", 50 }, { "p90", 90 }, { "p99", 99 },
  { "p999", 99.9 } }

-- nil when no latency was measured: a threshold on nothing is crossed.
local function latency_of(name)
  return function(r)
    if r.histogram:count() == 0 then return nil end
    return r.latency[name]
  end
end

--- Threshold names: how each reads its value from a Result, its unit, and
-- whether the value must stay at most (or at least) the limit.
M.THRESHOLDS = {
  p50 = { value = latency_of("p50"), unit = "seconds", at_most = true },
  p90 = { value = latency_of("p90"), unit = "seconds", at_most = true },
  p99 = { value = latency_of("p99"), unit = "seconds", at_most = true },
  p999 = { value = latency_of("p999"), unit = "seconds", at_most = true },
  max = { value = latency_of("max"), unit = "seconds", at_most = true },
  mean = { value = latency_of("mean"), unit = "seconds", at_most = true },
  error_rate = { value = function(r) return r.error_rate end,
    unit = "ratio", at_most = true },
  check_rate = { value = function(r) return r.check_rate end,
    unit = "ratio", at_most = false },
  retry_rate = { value = function(r) return r.retry_rate end,
    unit = "per request", at_most = true },
  rps = { value = function(r) return r.rps end, unit = "per second",
    at_most = false },
}

local NAMES = {}
for name in pairs(M.THRESHOLDS) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)
M.THRESHOLD_NAMES = NAMES

--- Check a `thresholds` table (name -> limit); returns a copy.
function M.check_thresholds(t, what, has_check)
  if t == nil then return {} end
  if type(t) ~= "table" then
    invalid(what .. " must be a table of name = limit, got " .. describe(t))
  end
  local out = {}
  for name, limit in pairs(t) do
    if not M.THRESHOLDS[name] then
      invalid(what .. ": unknown threshold " .. describe(name)
        .. " (known: " .. table.concat(NAMES, ", ") .. ")")
    end
    if type(limit) ~= "number" or limit ~= limit or limit < 0
        or limit == math.huge then
      invalid(what .. "." .. name .. " must be a number >= 0, got "
        .. describe(limit))
    end
    if M.THRESHOLDS[name].unit == "ratio" and limit > 1 then
      invalid(what .. "." .. name .. " is a ratio from 0 to 1 (0.01 for "
        .. "1%), got " .. describe(limit))
    end
    if name == "check_rate" and not has_check then
      invalid(what .. ".check_rate needs a check function to measure")
    end
    out[name] = limit
  end
  return out
end

local function add(t, k, n)
  t[k] = (t[k] or 0) + n
end

---------------------------------------------------------------------------
-- Recorder

local Recorder = {}
Recorder.__index = Recorder

--- A recorder for a load that started at `started` (core.now's clock).
function M.recorder(started)
  return setmetatable({
    started = started, requests = 0, responses = 0, errors = 0,
    failed = 0, by_status = {}, by_error = {}, error_examples = {},
    checks = 0, checks_failed = 0, check_example = nil, retries = 0,
    attempts_sent = 0, resent = 0, hedges = 0, attempts = {}, late = 0,
    dropped = 0, latency = core.histogram(), attempt_latency = core.histogram(),
    timeline = {}, open_second = 0, second_latency = core.histogram(),
  }, Recorder)
end

-- The timeline entry of the second `at` falls in (1 for the first).
local function entry_at(self, at)
  local k = math.floor(at - self.started) + 1
  if k < 1 then k = 1 end
  local timeline = self.timeline
  for s = #timeline + 1, k do
    timeline[s] = { second = s, requests = 0, errors = 0, retries = 0 }
  end
  return timeline[k], k
end

-- A second's p50 and p99 are taken when the next one starts: one small
-- histogram serves every second.
local function close_second(self)
  local h = self.second_latency
  local entry = self.timeline[self.open_second]
  if entry and h:count() > 0 then
    entry.p50, entry.p99 = h:percentile(50), h:percentile(99)
  end
  h:reset()
end

-- entry_at for a request that ends at `at`, whose latency goes into the
-- second it falls in: a later second than the open one opens now.
local function ending_at(self, at)
  local entry, k = entry_at(self, at)
  if k > self.open_second then
    close_second(self)
    self.open_second = k
  end
  return entry
end

--- An attempt ended (the client's recorder hook): `record` is the
-- attempt's history record, `response` its Response or nil; `cut` when the
-- load itself cancelled it (its latency is not recorded).
function Recorder:attempt(record, response, cut)
  self.attempts_sent = self.attempts_sent + 1
  if record.resent then self.resent = self.resent + 1 end
  if record.hedges then self.hedges = self.hedges + record.hedges end
  -- libcurl's own measure of the transfer; Lua's only for errors.
  local took, at
  if response then
    took, at = core.transfer_times(response)
  else
    local err = record.error
    took, at = record.elapsed, type(err) == "table" and err.finished_at
  end
  if record.attempt > 1 then
    self.retries = self.retries + 1
    -- In the second the transfer ended, as libcurl's end is reported.
    local entry = entry_at(self, at or core.now())
    entry.retries = entry.retries + 1
  end
  if not cut then self.attempt_latency:record(took) end
end

--- A request ended at `at` after `latency` seconds (nil: not measured)
-- and `attempts` attempts, with a response of `status` or an error of
-- `kind`.
function Recorder:finished(at, latency, attempts, status, kind, message)
  self.requests = self.requests + 1
  add(self.attempts, attempts, 1)
  local entry = ending_at(self, at)
  entry.requests = entry.requests + 1
  if status then
    self.responses = self.responses + 1
    add(self.by_status, status, 1)
    if status >= 400 then self.failed = self.failed + 1 end
  else
    self.errors = self.errors + 1
    self.failed = self.failed + 1
    entry.errors = entry.errors + 1
    add(self.by_error, kind, 1)
    if self.error_examples[kind] == nil then
      self.error_examples[kind] = message
    end
  end
  -- No latency for requests the load cut itself (Ctrl-C, the grace).
  if latency then
    self.latency:record(latency)
    self.second_latency:record(latency)
  end
end

--- What a load's driver (core.driver) counted since its last tally, all
-- in the second t.at falls in: the requests that ended in a response that
-- stood, their statuses ({status = count}) and attempts ({attempts =
-- count}), the attempts that ended (t.sent, t.resent, t.retries). The
-- driver records the latencies itself. t.next_at (or nil): the driver
-- records the next ones' latencies in the second of next_at, which opens
-- now.
function Recorder:tally(t)
  local requests = t.requests
  if requests > 0 or t.sent > 0 then
    local entry = ending_at(self, t.at)
    entry.requests = entry.requests + requests
    entry.retries = entry.retries + t.retries
    self.requests = self.requests + requests
    for n, count in pairs(t.attempts) do add(self.attempts, n, count) end
    self.responses = self.responses + t.responses
    self.failed = self.failed + t.failed
    for status, n in pairs(t.statuses) do add(self.by_status, status, n) end
    self.checks = self.checks + t.checks
    self.checks_failed = self.checks_failed + t.checks_failed
    self.attempts_sent = self.attempts_sent + t.sent
    self.resent = self.resent + t.resent
    self.retries = self.retries + t.retries
  end
  if t.next_at then ending_at(self, t.next_at) end
end

--- `n` requests were cut by the load at `at`, as errors of `kind` with
-- `message` and no latency: `in_flight` of them had an attempt whose
-- request had gone out (`resent` of those sent twice by libcurl,
-- `retries` of them a retry), and `attempts` = {attempts = count}.
function Recorder:cut(n, at, kind, message, in_flight, resent, retries,
    attempts)
  self.attempts_sent = self.attempts_sent + in_flight
  self.resent = self.resent + resent
  if retries > 0 then
    self.retries = self.retries + retries
    local entry = entry_at(self, at)
    entry.retries = entry.retries + retries
  end
  local left = n
  for k, count in pairs(attempts) do
    for _ = 1, count do self:finished(at, nil, k, nil, kind, message) end
    left = left - count
  end
  assert(left == 0, "Recorder:cut: the attempts do not add up to n")
end

--- A check ran on a response: passed, or failed (with why, when it raised).
function Recorder:check(passed, message)
  self.checks = self.checks + 1
  if not passed then
    self.checks_failed = self.checks_failed + 1
    if message and self.check_example == nil then
      self.check_example = message
    end
  end
end

---------------------------------------------------------------------------
-- Result

local Result = { __name = "retry.LoadResult" }
Result.__index = Result
M.Result = Result

-- Empty when nothing was measured: its zeros would read as latencies (the
-- summary says "no data", and a threshold on it is crossed).
local function summarize(h)
  if h:count() == 0 then return {} end
  local t = { mean = h:mean(), min = h:min(), max = h:max() }
  for _, p in ipairs(PERCENTILES) do t[p[1]] = h:percentile(p[2]) end
  return t
end

-- The figures computed from the counts: rates, percentiles, thresholds.
local function derive(r)
  local requests = r.requests
  r.rps = r.duration > 0 and requests / r.duration or 0
  r.error_rate = requests > 0 and r.failed / requests or 0
  r.check_rate = r.checks > 0 and (r.checks - r.checks_failed) / r.checks
    or nil
  r.retry_rate = requests > 0 and r.retries / requests or 0
  r.latency = summarize(r.histogram)
  r.attempt_latency = summarize(r.attempt_histogram)
  r.thresholds = {}
  r.ok = true
  for name, limit in pairs(r.limits) do
    local def = M.THRESHOLDS[name]
    local value = def.value(r)
    local ok = false
    if value == nil then
      ok = false
    elseif def.at_most then
      ok = value <= limit
    else
      ok = value >= limit
    end
    r.thresholds[name] = { limit = limit, value = value, ok = ok }
    if not ok then r.ok = false end
  end
  return setmetatable(r, Result)
end

--- The Result of what was recorded. meta: duration, model, concurrency,
-- rate, label, limits (thresholds), interrupted, capped_by.
function Recorder:result(meta)
  close_second(self)
  return derive({
    schema = M.SCHEMA, label = meta.label, model = meta.model,
    concurrency = meta.concurrency, rate = meta.rate,
    capped_by = meta.capped_by, interrupted = meta.interrupted or false,
    duration = meta.duration, limits = meta.limits or {},
    requests = self.requests, responses = self.responses,
    errors = self.errors, failed = self.failed, by_status = self.by_status,
    by_error = self.by_error, error_examples = self.error_examples,
    checks = self.checks, checks_failed = self.checks_failed,
    check_example = self.check_example, retries = self.retries,
    attempts_sent = self.attempts_sent, resent = self.resent,
    hedges = self.hedges, attempts = self.attempts, late = self.late,
    dropped = self.dropped, timeline = self.timeline,
    histogram = self.latency, attempt_histogram = self.attempt_latency,
  })
end

local function string_keys(t)
  local out = {}
  for k, v in pairs(t) do out[tostring(k)] = v end
  return out
end

local function export(h)
  local t = h:export()
  t.buckets = json.array(t.buckets)
  return t
end

-- Methods called on something else (r.summary(5), a dot for a colon)
-- say so rather than fail inside.
local function check_self(self, method)
  if getmetatable(self) ~= Result then
    values.not_self(self, method, "LoadResult", "LoadResult", "r", "()")
  end
end

--- The figures as a table shaped like the JSON (README, "Load checks").
function Result:to_table()
  check_self(self, "to_table")
  local thresholds = {}
  for name, t in pairs(self.thresholds) do
    thresholds[name] = { limit = t.limit, value = t.value, ok = t.ok }
  end
  return {
    schema = self.schema, label = self.label, model = self.model,
    concurrency = self.concurrency, rate = self.rate,
    capped_by = self.capped_by, interrupted = self.interrupted,
    merged = self.merged, threads = self.threads, requests = self.requests,
    responses = self.responses,
    errors = self.errors, failed = self.failed,
    by_status = string_keys(self.by_status), by_error = self.by_error,
    error_examples = self.error_examples, checks = self.checks,
    checks_failed = self.checks_failed, check_example = self.check_example,
    retries = self.retries, attempts_sent = self.attempts_sent,
    resent = self.resent, hedges = self.hedges, attempts = string_keys(self.attempts),
    late = self.late, dropped = self.dropped, duration = self.duration,
    rps = self.rps,
    error_rate = self.error_rate, check_rate = self.check_rate,
    retry_rate = self.retry_rate, latency = self.latency,
    attempt_latency = self.attempt_latency, thresholds = thresholds,
    histogram = export(self.histogram),
    attempt_histogram = export(self.attempt_histogram),
    timeline = json.array(self.timeline),
  }
end

--- The figures as JSON text (pretty-printed, keys sorted).
function Result:to_json()
  check_self(self, "to_json")
  return json.encode(self:to_table(), "  ") .. "\n"
end

function Result:summary()
  check_self(self, "summary")
  return require("retry.summary").format(self)
end

function Result:__tostring()
  return ("retry.LoadResult (%d requests, %d errors)"):format(self.requests,
    self.errors)
end

-- The counts of a result: read from JSON one by one, added by merge.
local SUMMED = { "requests", "responses", "errors", "failed", "checks",
  "checks_failed", "retries", "attempts_sent", "resent", "hedges", "late",
  "dropped" }

local MAX_COUNT = 2 ^ 53 -- what a JSON number holds exactly

local function count_field(t, name, where)
  local v = type(t[name]) == "number" and math.tointeger(t[name])
  if not v or v < 0 or v > MAX_COUNT then
    invalid(where .. ": " .. name .. " must be a count, got "
      .. describe(t[name]))
  end
  return v
end

local function count_map(t, name, where, integer_keys)
  local v = t[name]
  if v == nil then return {} end
  if type(v) ~= "table" then
    invalid(where .. ": " .. name .. " must be an object, got " .. describe(v))
  end
  local out = {}
  for k, n in pairs(v) do
    local key = k
    if type(k) ~= "string" then
      invalid(where .. ": " .. name .. " must be an object, got a list")
    end
    if integer_keys then
      key = math.tointeger(tonumber(k))
      if key == nil or key < 0 then
        invalid(where .. ": " .. name .. " has a key that is not a count: "
          .. describe(k))
      end
    end
    out[key] = count_field(v, k, where .. ": " .. name)
  end
  return out
end

local function total(t)
  local n = 0
  for _, c in pairs(t) do n = n + c end
  return n
end

-- The counts of a result read from a file must agree with each other.
local function check_sums(r, where)
  local function agree(what, a, b)
    if a ~= b then
      invalid(("%s: the counts do not add up: %s (%d and %d)"):format(where,
        what, a, b))
    end
  end
  agree("responses + errors and requests", r.responses + r.errors,
    r.requests)
  agree("by_status and responses", total(r.by_status), r.responses)
  agree("by_error and errors", total(r.by_error), r.errors)
  agree("attempts and requests", total(r.attempts), r.requests)
  if r.checks_failed > r.checks or r.checks > r.responses
      or r.failed > r.requests or r.failed < r.errors
      or r.retries > r.attempts_sent then
    invalid(where .. ": the counts do not add up: checks, checks_failed, "
      .. "failed or retries")
  end
  for status in pairs(r.by_status) do
    if status < 100 or status > 599 then
      invalid(where .. ": by_status has " .. status .. ", not a status code")
    end
  end
end

--- A Result from JSON text written by to_json; `where` names the source in
-- errors (a file name).
function M.from_json(text, where)
  where = where or "load result"
  local t, err = json.decode(text)
  if t == nil then invalid(where .. ": not JSON: " .. err) end
  if type(t) ~= "table" or t.schema ~= M.SCHEMA then
    invalid(where .. ": not a load result (schema " .. M.SCHEMA .. ")")
  end
  local function histogram(name)
    if type(t[name]) ~= "table" then
      invalid(where .. ": " .. name .. " is missing")
    end
    local ok, h = pcall(core.histogram_import, t[name])
    if not ok then
      invalid(where .. ": " .. name .. ": " .. tostring(h.message or h))
    end
    return h
  end
  local timeline = {}
  for i, e in ipairs(type(t.timeline) == "table" and t.timeline or {}) do
    if type(e) ~= "table" then
      invalid(where .. ": timeline[" .. i .. "] must be an object")
    end
    local at = where .. ": timeline[" .. i .. "]"
    -- Entry i is second i: one missing or out of order is a file edited
    -- or cut, whose seconds would otherwise be added to the wrong ones.
    if e.second ~= nil and e.second ~= i then
      invalid(at .. ": second must be " .. i .. " (the entries are the "
        .. "run's seconds in order), got " .. describe(e.second))
    end
    timeline[i] = { second = i, requests = count_field(e, "requests", at),
      errors = count_field(e, "errors", at),
      retries = count_field(e, "retries", at),
      p50 = tonumber(e.p50), p99 = tonumber(e.p99) }
  end
  local limits = {}
  for name, th in pairs(type(t.thresholds) == "table" and t.thresholds or {}) do
    if type(th) ~= "table" then
      invalid(where .. ": thresholds." .. tostring(name) .. " must be an "
        .. "object with a limit")
    end
    limits[name] = th.limit
  end
  limits = M.check_thresholds(limits, where .. ": thresholds", true)
  if t.timeline ~= nil and (type(t.timeline) ~= "table"
      or (next(t.timeline) ~= nil and t.timeline[1] == nil)) then
    invalid(where .. ": timeline must be a list")
  end
  local duration = t.duration
  -- Up to some 30 years: what a run can last, and what a summary shows.
  if type(duration) ~= "number" or not (duration >= 0 and duration <= 1e9)
  then
    invalid(where .. ": duration must be a number of seconds from 0 to 1e9, "
      .. "got " .. describe(duration))
  end
  local function optional(name, check, must)
    local v = t[name]
    -- JSON null (cjson.null, a userdata) is no value.
    if v == nil or type(v) == "userdata" then return nil end
    if not check(v) then
      invalid(where .. ": " .. name .. " must be " .. must .. ", got "
        .. describe(v))
    end
    return v
  end
  local function count_or_nil(v)
    return type(v) == "number" and math.tointeger(v) ~= nil and v >= 0
      and v <= MAX_COUNT
  end
  local function positive(v)
    return type(v) == "number" and v > 0 and v < math.huge
  end
  local function text_map(name)
    local out = {}
    for k, v in pairs(type(t[name]) == "table" and t[name] or {}) do
      if type(k) == "string" and type(v) == "string" then out[k] = v end
    end
    return out
  end
  local r = {
    schema = M.SCHEMA,
    label = optional("label", function(v) return type(v) == "string" end,
      "a string"),
    model = optional("model", function(v)
      return v == "open" or v == "closed" or v == "mixed"
    end, "open, closed or mixed"),
    concurrency = math.tointeger(optional("concurrency", count_or_nil,
      "a count")),
    rate = optional("rate", positive, "a number > 0"),
    capped_by = math.tointeger(optional("capped_by", count_or_nil,
      "a count")),
    interrupted = t.interrupted == true,
    merged = math.tointeger(optional("merged", function(v)
      return count_or_nil(v) and v >= 1
    end, "a count >= 1")),
    threads = math.tointeger(optional("threads", function(v)
      return count_or_nil(v) and v >= 1
    end, "a count >= 1")),
    duration = duration, limits = limits,
    by_status = count_map(t, "by_status", where, true),
    by_error = count_map(t, "by_error", where),
    error_examples = text_map("error_examples"),
    check_example = type(t.check_example) == "string" and t.check_example
      or nil,
    attempts = count_map(t, "attempts", where, true), timeline = timeline,
    histogram = histogram("histogram"),
    attempt_histogram = histogram("attempt_histogram"),
  }
  for _, f in ipairs(SUMMED) do r[f] = count_field(t, f, where) end
  check_sums(r, where)
  return derive(r)
end

local MAPS = { "by_status", "by_error", "attempts" }

local function same_or(results, field, other)
  local v = results[1][field]
  for i = 2, #results do
    if results[i][field] ~= v then return other end
  end
  return v
end

--- Add results exactly, as if one run had made all their requests at once
-- (runs on several machines): counts add, histograms merge, the duration
-- is the longest. Each second of the timeline adds its counts; its p50
-- and p99 are the largest of the inputs' (the exact figures need the
-- per-second histograms, which are not kept). Thresholds: every limit any
-- input had (the strictest, where several had one), then `limits` (name ->
-- limit), which replace the inputs' of the same name, checked against the
-- merged figures.
function M.merge(results, limits)
  if type(results) ~= "table" or #results == 0 then
    invalid("retry.LoadResult.merge: expected a list of results")
  end
  for i, r in ipairs(results) do
    if getmetatable(r) ~= Result then
      invalid("retry.LoadResult.merge: item " .. i .. " is not a load "
        .. "result, got " .. describe(r))
    end
  end
  local out = {
    schema = M.SCHEMA, label = same_or(results, "label", "merged"),
    model = same_or(results, "model", "mixed"), concurrency = 0,
    rate = nil, duration = 0, limits = {}, interrupted = false,
    by_status = {}, by_error = {}, attempts = {}, error_examples = {},
    timeline = {}, histogram = core.histogram(),
    attempt_histogram = core.histogram(),
  }
  for _, f in ipairs(SUMMED) do out[f] = 0 end
  for _, r in ipairs(results) do
    for _, f in ipairs(SUMMED) do
      out[f] = out[f] + r[f]
      if out[f] > MAX_COUNT then
        invalid("retry.LoadResult.merge: " .. f .. " adds up to more than "
          .. "2^53")
      end
    end
    for _, f in ipairs(MAPS) do
      for k, n in pairs(r[f]) do add(out[f], k, n) end
    end
    for k, msg in pairs(r.error_examples) do
      if out.error_examples[k] == nil then out.error_examples[k] = msg end
    end
    out.check_example = out.check_example or r.check_example
    out.concurrency = out.concurrency + (r.concurrency or 0)
    if r.rate then out.rate = (out.rate or 0) + r.rate end
    if r.duration > out.duration then out.duration = r.duration end
    out.interrupted = out.interrupted or r.interrupted
    -- The same threshold in several inputs: the strictest limit holds.
    for name, limit in pairs(r.limits) do
      local have = out.limits[name]
      if have == nil or (M.THRESHOLDS[name].at_most and limit < have)
          or (not M.THRESHOLDS[name].at_most and limit > have) then
        out.limits[name] = limit
      end
    end
    out.histogram:merge(r.histogram)
    out.attempt_histogram:merge(r.attempt_histogram)
    for i, e in ipairs(r.timeline) do
      local o = out.timeline[i]
      if o == nil then
        o = { second = i, requests = 0, errors = 0, retries = 0 }
        out.timeline[i] = o
      end
      o.requests = o.requests + e.requests
      o.errors = o.errors + e.errors
      o.retries = o.retries + e.retries
      if e.p50 and (o.p50 == nil or e.p50 > o.p50) then o.p50 = e.p50 end
      if e.p99 and (o.p99 == nil or e.p99 > o.p99) then o.p99 = e.p99 end
    end
  end
  -- Limits given to the merge replace the inputs' limits of that name.
  limits = M.check_thresholds(limits, "retry.LoadResult.merge: limits", true)
  for name, limit in pairs(limits) do out.limits[name] = limit end
  out.merged = 0
  for _, r in ipairs(results) do out.merged = out.merged + (r.merged or 1) end
  -- A cap on one input says nothing about the others.
  if #results == 1 then out.capped_by = results[1].capped_by end
  return derive(out)
end

return M
