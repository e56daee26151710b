--- Tasks (contract section 1): run, spawn, await, cancel, gather.
-- The C core resumes coroutines from the loop and keeps the one record of
-- cancellation; this file keeps what a task means to a script: its results
-- or error, who awaits it, the scope (retry.run, or a retry.run nested in a
-- task) that waits for it, and the rule that no error is lost.
local core = require("retry.core")
local errors = require("retry.errors")
local values = require("retry.values")

local M = {}

local invalid, describe = errors.invalid, values.describe

local Task = { __name = "retry.Task" }
Task.__index = Task
-- A task not ended reads `done` from here: the field is set when it ends.
Task.done = false

-- The Task object of each task coroutine.
local by_thread = setmetatable({}, { __mode = "k" })
-- The run in progress: { main = Task, live = {[Task]=true}, root = scope }.
-- A scope is what one retry.run waits for: { live = {[Task]=true},
-- failed = {Task...}, run = the run, waiter = handle of the task waiting
-- for it or nil }.
local current_run = nil
-- How many tasks were spawned so far: each task's `serial` is its place in
-- that count, which tells a load which of its requests spawned it.
local spawned = 0

local function new_scope(run)
  return { live = {}, failed = {}, run = run }
end

local gsub, sub = string.gsub, string.sub

-- The traceback from level 2 without its last line, the C function every
-- task starts in (task_main, below), which says nothing to a script; all
-- of it when that line is all there is (the task's function could not be
-- called), or when a script's own debug.traceback gives something else.
local function traceback(message)
  local tb = debug.traceback(message, 3)
  if type(tb) ~= "string" then return tb end
  local without = gsub(tb, "\n\t%[C%]: in %?$", "")
  if sub(without, -16) == "stack traceback:" then return tb end
  return without
end

-- Message handler: keep the traceback of where the error happened. Error
-- objects get a `traceback` field; strings get it appended, once.
local function with_traceback(e)
  if errors.is_error(e) then
    if rawget(e, "traceback") == nil then
      local tb = traceback("")
      e.traceback = type(tb) == "string" and gsub(tb, "^\n", "") or tb
    end
    return e
  end
  if type(e) == "string" or type(e) == "number" then
    e = tostring(e)
    if not e:find("\nstack traceback:", 1, true) then
      e = traceback(e) -- not a tail call: it counts this frame as level 2
    end
  end
  return e
end

local function cancelled_error()
  return errors.new("cancelled", "the task was cancelled")
end

local function cancel_all(live)
  for t in pairs(live) do core.cancel(t.handle, cancelled_error()) end
end

local function finish(task, ok, ...)
  local scope = task.scope
  local run = scope.run
  core.ended(task.handle)
  task.done = true
  task.ok = ok
  if ok then
    task.results = table.pack(...)
  else
    task.err = (...)
    local cancelled = core.cancelled(task.handle)
      and errors.is_error(task.err, "cancelled")
    if not cancelled then scope.failed[#scope.failed + 1] = task end
  end
  run.live[task] = nil
  scope.live[task] = nil
  local waiters = task.waiters
  task.waiters = nil
  if waiters then
    for i = 1, #waiters do core.wake(waiters[i]) end
  end
  if scope.waiter and next(scope.live) == nil then core.wake(scope.waiter) end
  -- A failed main task ends the run: nobody is left to await the others.
  if task == run.main and not ok then cancel_all(run.live) end
end

-- Where every task's coroutine starts (in C): fn(...) under with_traceback,
-- then finish(task, ok, ...); a task cancelled before it started ends with
-- its pending error and never runs.
local task_main = core.task_main(finish, with_traceback)

--- Start `fn(...)` as a concurrent task; returns a Task.
function M.spawn(fn, ...)
  if not values.is_callable(fn) then
    invalid("retry.spawn: expected a function, got " .. describe(fn))
  end
  local run = current_run
  if run == nil then
    invalid("retry.spawn must be called inside a task: wrap the code in "
      .. "retry.run(function() ... end)")
  end
  local parent = by_thread[coroutine.running()]
  local scope = parent and (parent.inner or parent.scope) or run.root
  spawned = spawned + 1
  -- `waiters`, the handles of the tasks awaiting it, comes with the first;
  -- done, ok and results or err, when it ends. Four fields until then (its
  -- run is its scope's, `done` is false in Task): ten thousand waiting
  -- tasks take a table part of four slots each rather than eight.
  local task = setmetatable({ scope = scope, parent = parent,
    serial = spawned }, Task)
  local handle, thread = core.spawn(task_main, task, fn, ...)
  task.handle = handle
  by_thread[thread] = task
  run.live[task] = true
  scope.live[task] = true
  return task
end

--- How many tasks were spawned so far (the last one's serial).
function M.spawned()
  return spawned
end

--- The Task the calling code runs in, or nil outside a task.
function M.current()
  return by_thread[coroutine.running()]
end

local function check_task(self, method)
  if getmetatable(self) ~= Task then
    values.not_self(self, method, "task", "Task", "t", "()")
  end
end

--- Wait for the task to end; returns its results or raises its error.
function Task:await()
  check_task(self, "await")
  if not self.done then
    local me = by_thread[coroutine.running()]
    if me == self then invalid("task:await: a task cannot await itself") end
    if me == nil then core.park("task:await") end -- raises: not in a task
    local waiters = self.waiters
    if waiters == nil then
      waiters = {}
      self.waiters = waiters
    end
    waiters[#waiters + 1] = me.handle
    local ok, e = pcall(core.park, "task:await")
    if not ok then
      for i = #waiters, 1, -1 do
        if waiters[i] == me.handle then table.remove(waiters, i) end
      end
      error(e, 0)
    end
  end
  self.observed = true
  if self.ok then return table.unpack(self.results, 1, self.results.n) end
  error(self.err, 0)
end

--- Cancel the task: a `cancelled` error is raised inside it where it waits
-- (its transfer or sleep is stopped at once), or where it next waits if it
-- is the caller. Every call while the task lives cancels again, so a task
-- that caught one cancel is cancelled by the next. Returns false when the
-- task had already ended.
function Task:cancel()
  check_task(self, "cancel")
  if self.done then return false end
  return core.cancel(self.handle, cancelled_error())
end

function Task:__tostring()
  local state = self.done and (self.ok and "done" or "failed") or "pending"
  return "retry.Task (" .. state .. ")"
end

--- Await every task (given as arguments or as one list); returns the list
-- of their first results in order. The first error is raised after all
-- have ended.
function M.gather(...)
  local tasks, count = { ... }, select("#", ...)
  if count == 1 and getmetatable(tasks[1]) ~= Task then
    local list = tasks[1]
    -- A sequence, or one that says its length in `n` (table.pack).
    count = type(list) == "table" and (math.tointeger(list.n)
      or values.list_length(list))
    if not count then
      invalid("retry.gather: expected Tasks or one list of Tasks, got "
        .. describe(list))
    end
    tasks = list
  end
  for i = 1, count do
    if getmetatable(tasks[i]) ~= Task then
      invalid("retry.gather: argument " .. i .. " is not a Task, got "
        .. describe(tasks[i]))
    end
  end
  local results, first_error = { n = count }, nil
  for i = 1, count do
    local ok, r = pcall(tasks[i].await, tasks[i])
    if ok then
      results[i] = r
    elseif not tasks[i].done then
      error(r, 0) -- the await itself was interrupted: this task's cancel
    elseif first_error == nil then
      first_error = r
    end
  end
  if first_error ~= nil then error(first_error, 0) end
  return results
end

-- The most of the other errors a string error names, one line each: a
-- script whose thousand tasks all fail says so in a screenful.
local NAMED_MAX = 10

-- What a string error adds about errs[2..]: the first line of each (of
-- the first NAMED_MAX), and how many more there were.
local function also_failed_text(errs)
  local others = #errs - 1
  local lines = { ("\n(%d more %s failed too:"):format(others,
    others == 1 and "task" or "tasks") }
  for i = 2, math.min(#errs, NAMED_MAX + 1) do
    lines[#lines + 1] = "\n  " .. tostring(errs[i]):match("[^\n]*")
  end
  if others > NAMED_MAX then
    lines[#lines + 1] = ("\n  and %d more"):format(others - NAMED_MAX)
  end
  return table.concat(lines) .. ")"
end

-- Raise the errors of the scope's failed tasks nobody awaited, if any: the
-- first, carrying the others (nothing is lost) in `also_failed` when it is
-- an error object, or named in the message when it is a string.
local function raise_unobserved(scope)
  local errs = {}
  for _, t in ipairs(scope.failed) do
    if not t.observed then
      t.observed = true
      errs[#errs + 1] = t.err
    end
  end
  local first = errs[1]
  if first == nil then return end
  if #errs > 1 then
    if type(first) == "table" then
      first.also_failed = { table.unpack(errs, 2) }
    else
      first = tostring(first) .. also_failed_text(errs)
    end
  end
  error(first, 0)
end

-- Park the task `me` until every task of `scope` has ended. Being cancelled
-- meanwhile cancels them, and the first such error is raised once they
-- have all ended.
local function wait_scope(me, scope)
  local interrupted
  while next(scope.live) ~= nil do
    scope.waiter = me.handle
    local ok, e = pcall(core.park, "retry.run")
    scope.waiter = nil
    if not ok then
      interrupted = interrupted or e
      cancel_all(scope.live)
    end
  end
  if interrupted ~= nil then error(interrupted, 0) end
end

-- retry.run inside a task: run fn in that task and return once fn and every
-- task spawned under it have ended. If fn fails, those tasks are cancelled.
local function nursery(me, fn, ...)
  local scope = new_scope(me.scope.run)
  local outer = me.inner
  me.inner = scope
  local results = table.pack(xpcall(fn, with_traceback, ...))
  me.inner = outer
  if not results[1] then cancel_all(scope.live) end
  wait_scope(me, scope)
  if not results[1] then error(results[2], 0) end
  raise_unobserved(scope)
  return table.unpack(results, 2, results.n)
end

--- Run `fn(...)` as the main task and return its results once it and every
-- task spawned under it have ended. The main task's error, or else the
-- error of a task nobody awaited, is raised with its traceback. Inside a
-- task it runs `fn` in that task (a nursery).
function M.run(fn, ...)
  if not values.is_callable(fn) then
    invalid("retry.run: expected a function, got " .. describe(fn))
  end
  if current_run ~= nil then
    local me = by_thread[coroutine.running()]
    if me == nil then
      invalid("retry.run cannot be called from a coroutine made inside a "
        .. "task: call it from the task itself")
    end
    return nursery(me, fn, ...)
  end
  core.enter() -- raises when a loop runs without this module knowing
  local run = { live = {} }
  run.root = new_scope(run)
  current_run = run
  local ok, main = pcall(M.spawn, fn, ...)
  local loop_error, finished, fatal, deadlock
  if ok then
    run.main = main
    ok, finished, fatal = pcall(core.loop)
    if ok and not finished then
      -- Every live task waits on another and nothing can wake them; an
      -- error that stranded them (a task's coroutine closed) says why.
      deadlock = true
      cancel_all(run.live)
      local later
      ok, finished, later = pcall(core.loop)
      fatal = fatal or later
    end
    if not ok then loop_error = finished end
  else
    loop_error = main
  end
  current_run = nil
  core.leave()
  if not ok then error(loop_error, 0) end
  if fatal ~= nil then error(fatal, 0) end
  if deadlock then
    invalid("retry.run: deadlock: tasks were waiting on each other with "
      .. "nothing left to wake them, and were cancelled")
  end
  if not main.ok then
    main.observed = true
    error(main.err, 0)
  end
  raise_unobserved(run.root)
  return table.unpack(main.results, 1, main.results.n)
end

M.Task = Task
return M
