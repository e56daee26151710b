--- `retry.CircuitBreaker{failure_ratio = 0.5, min_requests = 20, window = 10,
-- open_for = 5}`: stops sending to a service that keeps failing.
--
-- Closed: requests go; their final outcomes are counted over the last
-- `window` seconds. A failure is a final outcome that would have been
-- retried (a transport error or a retryable status). Once at least
-- `min_requests` outcomes are counted and failures are `failure_ratio` of
-- them or more, it opens. Open: every attempt fails at once with kind
-- `circuit_open`. Once `open_for` seconds have passed, the next request
-- makes it half-open (`state` reads "open" until then) and goes as its
-- one trial, whose outcome closes the breaker or opens it again.
-- State changes go to each client's logger and trace hooks
-- (`on_breaker_change`). One breaker may serve many clients.
local core = require("retry.core")
local errors = require("retry.errors")
local values = require("retry.values")
local window = require("retry.window")

local M = {}

local Breaker = { __name = "retry.CircuitBreaker" }
Breaker.__index = Breaker

local KEYS = { failure_ratio = true, min_requests = true, window = true,
  open_for = true }

local function check_number(v, name, default, max)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 or v > max then
    errors.invalid("CircuitBreaker: " .. name .. " must be a number > 0"
      .. (max < math.huge and " and <= " .. max or " and finite") .. ", got "
      .. values.describe(v))
  end
  return v
end

function M.CircuitBreaker(o)
  if o == nil then o = {} end
  if type(o) ~= "table" then
    errors.invalid("CircuitBreaker needs a table of fields, got "
      .. values.describe(o))
  end
  values.check_keys(o, KEYS, "CircuitBreaker")
  local span = check_number(o.window, "window", 10, 1e9)
  return setmetatable({
    failure_ratio = check_number(o.failure_ratio, "failure_ratio", 0.5, 1),
    min_requests = values.check_integer(o.min_requests,
      "CircuitBreaker: min_requests", 1) or 20,
    window = span,
    open_for = check_number(o.open_for, "open_for", 5, 1e9),
    state = "closed",
    opens = 0,
    opened_at = nil,
    trial = false, -- the half-open trial is out
    outcomes = window.new(span),
    failures = window.new(span),
  }, Breaker)
end

function M.is_breaker(v) return getmetatable(v) == Breaker end

local function change(self, to, notify)
  local from = self.state
  self.state = to
  if to == "open" then
    self.opens = self.opens + 1
    self.opened_at = core.now()
  elseif to == "closed" then
    self.outcomes:clear()
    self.failures:clear()
  end
  if notify then notify(self, from, to) end
end

--- May an attempt go now? Returns true (and true again when this request
-- is the half-open trial), or false while open and while a trial is out.
-- `notify(breaker, from, to)` hears of a change.
function Breaker:allow(notify)
  local state = self.state
  if state == "closed" then return true end
  if state == "open" then
    if core.now() - self.opened_at < self.open_for then return false end
    change(self, "half_open", notify)
  end
  if self.trial then return false end
  self.trial = true
  return true, true
end

--- A request's final outcome: `failed` when it would have been retried.
-- `trial` says the request was the half-open trial.
function Breaker:record(failed, notify, trial)
  if self.state == "half_open" then
    if not trial then return end
    self.trial = false
    change(self, failed and "open" or "closed", notify)
    return
  end
  if self.state ~= "closed" then return end
  self.outcomes:add(1)
  if failed then self.failures:add(1) end
  local total = self.outcomes:sum()
  if total >= self.min_requests
      and self.failures:sum() >= self.failure_ratio * total then
    change(self, "open", notify)
  end
end

--- A trial request ended without an outcome (cancelled): let another go.
function Breaker:release_trial()
  if self.state == "half_open" then self.trial = false end
end

function Breaker:__tostring()
  return "retry.CircuitBreaker (" .. self.state .. ")"
end

return M
