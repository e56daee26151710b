--- The text summary of a load check (result:summary(), and what `lretry
-- load` prints at the end): requests and rate, status and error counts,
-- checks, retries and the attempts histogram, latency percentiles end to
-- end and per attempt, and each threshold with a mark.
local M = {}

--- Seconds for people, in ASCII so columns line up: 850us, 12.35ms,
-- 1.52s, 2m05.0s, 3h02m05s. A value is shown in the unit it rounds to.
function M.time(s)
  if s < 0.0009995 then return ("%.0fus"):format(s * 1e6) end
  if s < 0.999995 then return ("%.2fms"):format(s * 1e3) end
  if s < 59.995 then return ("%.2fs"):format(s) end
  local tenths = math.floor(s * 10 + 0.5)
  if tenths < 36000 then
    return ("%dm%04.1fs"):format(tenths // 600, tenths % 600 / 10)
  end
  local whole = tenths // 10
  return ("%dh%02dm%02ds"):format(whole // 3600, whole % 3600 // 60,
    whole % 60)
end

-- Messages come from servers and scripts: no control characters reach the
-- terminal.
local function printable(text)
  return (tostring(text):gsub("%c", " "))
end

local function percent(x)
  return ("%.2f%%"):format(x * 100)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  return keys
end

local function counts(t, total)
  local parts = {}
  for _, k in ipairs(sorted_keys(t)) do
    local part = ("%s: %d"):format(tostring(k), t[k])
    if total then part = part .. (" (%.1f%%)"):format(100 * t[k] / total) end
    parts[#parts + 1] = part
  end
  return table.concat(parts, "  ")
end

-- A threshold's value or limit with `digits` significant digits.
local function threshold_text(unit, v, digits)
  local g = "%." .. digits .. "g"
  if unit == "seconds" then
    if v < 0.001 then return (g .. "us"):format(v * 1e6) end
    if v < 1 then return (g .. "ms"):format(v * 1e3) end
    return (g .. "s"):format(v)
  end
  if unit == "ratio" then return (g .. "%%"):format(v * 100) end
  if unit == "per second" then return (g .. "/s"):format(v) end
  return g:format(v)
end

-- Limit and value, with as many digits as it takes for two different
-- numbers not to read the same.
local function threshold_pair(unit, limit, value)
  if value == nil then return threshold_text(unit, limit, 4), "no data" end
  for digits = 4, 17 do
    local a, b = threshold_text(unit, limit, digits),
      threshold_text(unit, value, digits)
    if a ~= b or limit == value then return a, b end
  end
  return threshold_text(unit, limit, 17), threshold_text(unit, value, 17)
end

-- `h` is the histogram `l` was read from: with no values, its zeros are
-- no latency at all.
local function latency_row(name, l, h)
  if h:count() == 0 then return ("  %-9s %9s"):format(name, "no data") end
  return ("  %-9s %9s %9s %9s %9s %9s %9s"):format(name, M.time(l.mean),
    M.time(l.p50), M.time(l.p90), M.time(l.p99), M.time(l.p999),
    M.time(l.max))
end

function M.format(r)
  local thresholds = require("retry.result").THRESHOLDS
  local out = {}
  local function line(fmt, ...)
    out[#out + 1] = (fmt:format(...):gsub("%s+$", ""))
  end
  if r.merged then
    line("lretry merge of %d %s: %s", r.merged,
      r.merged == 1 and "result" or "results", r.label or "script")
  else
    line("lretry load: %s", r.label or "script")
  end
  local model
  if r.model == "open" then
    model = ("open model, %.6g/s, up to %d in flight"):format(
      r.rate or 0, r.concurrency or 0)
  else
    model = ("%s model, %d concurrent"):format(r.model or "closed",
      r.concurrency or 0)
  end
  if r.threads then model = model .. (", %d threads"):format(r.threads) end
  line("  %s, %s%s", model, M.time(r.duration),
    r.interrupted and ", INTERRUPTED: partial figures" or "")
  if r.capped_by then
    line("  the client's limit (%d connections) capped the concurrency",
      r.capped_by)
  end
  line("")
  -- One decimal, but a slow run's rate keeps its figures (0.033/s).
  line("  %-10s %8d   " .. (r.rps >= 1 and "%.1f/s" or "%.2g/s"), "requests",
    r.requests, r.rps)
  line("  %-10s %8d   %s", "responses", r.responses, counts(r.by_status))
  line("  %-10s %8d   %s", "errors", r.errors, counts(r.by_error))
  for _, kind in ipairs(sorted_keys(r.error_examples)) do
    line("  %-10s %8s   %s: %s", "", "", kind,
      printable(r.error_examples[kind]))
  end
  if r.checks > 0 then
    line("  %-10s %8s   %d passed, %d failed", "checks",
      percent(r.check_rate), r.checks - r.checks_failed, r.checks_failed)
    if r.check_example then
      line("  %-10s %8s   %s", "", "", printable(r.check_example))
    end
  end
  line("  %-10s %8d   %.2f per request%s", "retries", r.retries,
    r.retry_rate, r.hedges > 0 and (", %d hedged copies"):format(r.hedges)
      or "")
  if r.resent > 0 then
    line("  %-10s %8d   attempts libcurl sent again at once: their kept-alive "
      .. "connection had died", "resent", r.resent)
  end
  line("  %-10s %8s   %s", "attempts", "", counts(r.attempts, r.requests))
  if r.late > 0 then
    line("  %-10s %8d   started over %s after their scheduled time: the "
      .. "in-flight cap was reached, or the runner fell behind", "late",
      r.late, M.time(require("retry.result").LATE_AFTER))
  end
  if r.dropped > 0 then
    line("  %-10s %8d   were due but never started: the in-flight cap "
      .. "was reached, or the runner fell behind", "dropped", r.dropped)
  end
  line("")
  line("  %-9s %9s %9s %9s %9s %9s %9s", "latency", "mean", "p50", "p90",
    "p99", "p99.9", "max")
  line("%s", latency_row("request", r.latency, r.histogram))
  line("%s", latency_row("attempt", r.attempt_latency, r.attempt_histogram))
  local names = sorted_keys(r.thresholds)
  if #names > 0 then
    line("")
    line("  thresholds")
    for _, name in ipairs(names) do
      local t, def = r.thresholds[name], thresholds[name]
      local limit, value = threshold_pair(def.unit, t.limit, t.value)
      line("    %s %-10s %s %-10s %s", t.ok and "✓" or "✗", name,
        def.at_most and "<=" or ">=", limit,
        value .. (t.ok and "" or "  CROSSED"))
    end
  end
  return table.concat(out, "\n") .. "\n"
end

return M
