--- The live progress line of a load check: one line on stderr, redrawn
-- four times a second, only when stderr is a terminal (never in a pipe or
-- a CI log). Reads the load's counters; changes nothing.
local core = require("retry.core")

local M = {}

M.INTERVAL = 0.25

--- A progress line for load `L`, or nil when stderr is not a terminal.
function M.new(L)
  local tty, columns = core.isatty(2)
  if not tty then return nil end
  return { load = L, last_done = 0, drawn = false, columns = columns or 80 }
end

local function draw(line)
  local L, now = line.load, core.now()
  local rec = L.recorder
  local done = rec.requests
  -- At least 0: a load with threads reads its start after this `now`.
  local elapsed = math.max(0, now - L.started)
  local since = now - (line.last_at or L.started)
  local rate = (done - line.last_done) / math.max(since, 1e-3)
  line.last_done, line.last_at = done, now
  local where
  if L.total ~= math.huge then
    where = ("%d/%d (%.0f%%)"):format(done, L.total, 100 * done / L.total)
  else
    where = ("%d done, %.0fs left"):format(done,
      math.max(0, L.ends - now))
  end
  local text = ("%.1fs  %s  %.0f/s  in flight %d  errors %d  retries %d%s")
    :format(elapsed, where, rate, L.started_count - done, rec.errors,
      rec.retries, L.stopping and "  stopping" or "")
  -- Cut to the terminal's width: a line that wrapped could not be erased.
  io.stderr:write("\r\27[K", text:sub(1, line.columns - 1))
  io.stderr:flush()
  line.drawn = true
end

--- The task that redraws the line until it is cancelled.
function M.run(line)
  while true do
    core.sleep(M.INTERVAL)
    draw(line)
  end
end

--- Erase the line, so the summary starts on a clean one.
function M.clear(line)
  if line.drawn then
    io.stderr:write("\r\27[K")
    io.stderr:flush()
  end
end

return M
