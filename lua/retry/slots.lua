--- A counting semaphore for tasks: at most `limit` holders at once, the
-- others wait in the order they came (aiohttp's connection limits). A
-- released slot goes straight to the first task still waiting, so a task
-- that arrives later cannot take it first.
local core = require("retry.core")
local errors = require("retry.errors")
local task = require("retry.task")

local M = {}

-- The error of a request whose client closed while it waited for a slot.
M.CLOSED_WHILE_QUEUED = "the RetryClient was closed while the request "
  .. "waited for a connection slot"

-- src/lua_run.c reads limit, used, head and tail, and takes and gives
-- back a slot itself when nobody waits (try_take, release's first case):
-- keep it in step with these fields.
local Slots = { __name = "retry.Slots" }
Slots.__index = Slots

--- `limit` holders at most; 0 means no limit.
function M.new(limit)
  return setmetatable({ limit = limit, used = 0, queue = {}, head = 1,
    tail = 0 }, Slots)
end

--- Take a slot if one is free and nobody waits for one; true if taken.
function Slots:try_take()
  if self.limit == 0 or (self.used < self.limit and self.head > self.tail) then
    self.used = self.used + 1
    return true
  end
  return false
end

--- Join the queue for the task whose handle is given: core.wake(handle)
-- comes when a slot is its (entry.granted), or with false when the client
-- closed. Returns the entry, for abandon.
function Slots:enqueue(handle)
  local entry = { handle = handle }
  self.tail = self.tail + 1
  self.queue[self.tail] = entry
  return entry
end

--- The task waiting with `entry` stopped waiting (it was cancelled): a
-- slot it was given goes to the next, and it leaves its place.
function Slots:abandon(entry)
  if entry.granted then
    self:release()
  else
    entry.gone = true
  end
end

--- Take a slot, waiting (in a task) while all are taken. Returns how long
-- it waited, in seconds. A cancel while waiting gives up the place.
function Slots:acquire()
  if self:try_take() then return 0 end
  local me = task.current()
  if me == nil then core.park("a request") end -- raises: not in a task
  local entry = self:enqueue(me.handle)
  local t0 = core.now()
  local ok, e = pcall(core.park, "a connection slot")
  if ok and e == false then
    error(errors.new("cancelled", M.CLOSED_WHILE_QUEUED), 0)
  end
  if not ok then
    self:abandon(entry)
    error(e, 0)
  end
  return core.now() - t0
end

--- Give a slot back: to the first task still waiting, or to the pool.
function Slots:release()
  while self.head <= self.tail do
    local entry = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    -- A waiter whose park was interrupted (cancelled) cannot be woken.
    if not entry.gone and core.wake(entry.handle) then
      entry.granted = true
      return
    end
  end
  self.used = self.used - 1
end

--- Send every waiter away with a `cancelled` error (the client closed).
function Slots:close()
  while self.head <= self.tail do
    local entry = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    if not entry.gone then core.wake(entry.handle, false) end
  end
end

--- Whether nobody holds or waits for a slot.
function Slots:idle()
  return self.used == 0 and self.head > self.tail
end

return M
