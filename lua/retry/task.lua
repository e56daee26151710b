--- Tasks (contract section 1): run, spawn, await, cancel, gather.
-- The C core resumes coroutines from the loop; this file keeps what a task
-- means to a script: its results or error, who awaits it, and the rule that
-- no error is lost.
local core = require("retry.core")
local errors = require("retry.errors")
local is_callable = require("retry.values").is_callable

local M = {}

local Task = { __name = "retry.Task" }
Task.__index = Task

-- The Task object of each task coroutine.
local by_thread = setmetatable({}, { __mode = "k" })
-- The run in progress: { main = Task, live = {[Task]=true}, failed = {} }.
local current_run = nil

-- Message handler: keep the traceback of where the error happened. Error
-- objects get a `traceback` field; strings get it appended, once.
local function with_traceback(e)
  if errors.is_error(e) then
    if rawget(e, "traceback") == nil then
      e.traceback = debug.traceback("", 2):gsub("^\n", "")
    end
    return e
  end
  if type(e) == "string" or type(e) == "number" then
    e = tostring(e)
    if not e:find("\nstack traceback:", 1, true) then
      return debug.traceback(e, 2)
    end
  end
  return e
end

local function cancel_all(run)
  for t in pairs(run.live) do t:cancel() end
end

local function finish(task, ok, ...)
  local run = task.run
  task.done = true
  task.ok = ok
  if ok then
    task.results = table.pack(...)
  else
    task.err = (...)
    local cancelled = task.cancelled and errors.is_error(task.err, "cancelled")
    if not cancelled then run.failed[#run.failed + 1] = task end
  end
  run.live[task] = nil
  local waiters = task.waiters
  task.waiters = nil
  for i = 1, #waiters do core.wake(waiters[i]) end
  -- A failed main task ends the run: nobody is left to await the others.
  if task == run.main and not ok then cancel_all(run) end
end

local function task_body(task, fn, ...)
  if task.cancelled then return finish(task, false, task.cancel_error) end
  return finish(task, xpcall(fn, with_traceback, ...))
end

--- Start `fn(...)` as a concurrent task; returns a Task.
function M.spawn(fn, ...)
  if not is_callable(fn) then
    error("retry.spawn: expected a function, got " .. type(fn), 2)
  end
  local run = current_run
  if run == nil then
    error("retry.spawn must be called inside a task: wrap the code in "
      .. "retry.run(function() ... end)", 2)
  end
  local task = setmetatable({ done = false, waiters = {}, run = run }, Task)
  local handle, thread = core.spawn(task_body, task, fn, ...)
  task.handle = handle
  by_thread[thread] = task
  run.live[task] = true
  return task
end

--- The Task the calling code runs in, or nil outside a task.
function M.current()
  return by_thread[coroutine.running()]
end

--- Wait for the task to end; returns its results or raises its error.
function Task:await()
  if getmetatable(self) ~= Task then
    error("task:await: expected a Task (use task:await(), not task.await())", 2)
  end
  if not self.done then
    local me = by_thread[coroutine.running()]
    if me == self then error("task:await: a task cannot await itself", 2) end
    if me == nil then core.park("task:await") end -- raises: not in a task
    local waiters = self.waiters
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
-- is the caller. Returns false when the task had already ended.
function Task:cancel()
  if self.done then return false end
  if not self.cancelled then
    self.cancelled = true
    self.cancel_error = errors.new("cancelled", "the task was cancelled")
    core.cancel(self.handle, self.cancel_error)
  end
  return true
end

function Task:__tostring()
  local state = self.done and (self.ok and "done" or "failed") or "pending"
  return "retry.Task (" .. state .. ")"
end

--- Await every task (given as arguments or as one list); returns the list
-- of their first results in order. The first error is raised after all
-- have ended.
function M.gather(...)
  local tasks = { ... }
  if select("#", ...) == 1 and getmetatable(tasks[1]) ~= Task
      and type(tasks[1]) == "table" then
    tasks = tasks[1]
  end
  for i = 1, #tasks do
    if getmetatable(tasks[i]) ~= Task then
      error("retry.gather: argument " .. i .. " is not a Task", 2)
    end
  end
  local results, first_error = { n = #tasks }, nil
  for i = 1, #tasks do
    local ok, r = pcall(tasks[i].await, tasks[i])
    if ok then
      results[i] = r
    else
      local me = M.current()
      if me and me.cancelled then error(r, 0) end
      if first_error == nil then first_error = r end
    end
  end
  if first_error ~= nil then error(first_error, 0) end
  return results
end

local function first_unobserved(run)
  for _, t in ipairs(run.failed) do
    if not t.observed then return t end
  end
end

--- Run `fn(...)` as the main task and return its results once it and every
-- task spawned under it have ended. The main task's error, or else the
-- error of a task nobody awaited, is raised with its traceback.
function M.run(fn, ...)
  if not is_callable(fn) then
    error("retry.run: expected a function, got " .. type(fn), 2)
  end
  core.enter() -- raises when nested
  local run = { live = {}, failed = {} }
  current_run = run
  local ok, main = pcall(M.spawn, fn, ...)
  local loop_error, finished, fatal, deadlock
  if ok then
    run.main = main
    ok, finished, fatal = pcall(core.loop)
    if ok and not finished then
      -- Every live task waits on another and nothing can wake them.
      deadlock = true
      cancel_all(run)
      ok, finished, fatal = pcall(core.loop)
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
    error("retry.run: deadlock: tasks were waiting on each other with "
      .. "nothing left to wake them, and were cancelled", 2)
  end
  if not main.ok then
    main.observed = true
    error(main.err, 0)
  end
  local failed = first_unobserved(run)
  if failed then
    failed.observed = true
    error(failed.err, 0)
  end
  return table.unpack(main.results, 1, main.results.n)
end

M.Task = Task
return M
