--- A count over the last `span` seconds, kept in ten slots: adding and
-- summing cost a few table reads, and memory does not grow with the load.
-- Used by the retry budget and the circuit breaker.
local core = require("retry.core")

local M = {}

local SLOTS = 10

local Window = { __name = "retry.Window" }
Window.__index = Window

function M.new(span)
  local w = setmetatable({ width = span / SLOTS, counts = {}, stamps = {} },
    Window)
  for i = 1, SLOTS do w.counts[i], w.stamps[i] = 0, -1 end
  return w
end

-- The slot of time `now`, emptied if it last counted an older period.
local function slot(w, now)
  local period = math.floor(now / w.width)
  local i = period % SLOTS + 1
  if w.stamps[i] ~= period then
    w.stamps[i], w.counts[i] = period, 0
  end
  return i
end

function Window:add(n)
  local i = slot(self, core.now())
  self.counts[i] = self.counts[i] + (n or 1)
end

--- The count of the last `span` seconds.
function Window:sum()
  local period = math.floor(core.now() / self.width)
  local total = 0
  for i = 1, SLOTS do
    if period - self.stamps[i] < SLOTS then total = total + self.counts[i] end
  end
  return total
end

--- Forget everything.
function Window:clear()
  for i = 1, SLOTS do self.counts[i], self.stamps[i] = 0, -1 end
end

return M
