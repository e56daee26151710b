--- `retry.RetryBudget{ratio = 0.2, min_per_second = 10, ttl = 10}`: Finagle's
-- retry budget. Every request deposits `ratio` of a retry; a retry
-- withdraws one. Over the last `ttl` seconds, retries may number
-- `min_per_second * ttl + ratio * requests`, so a burst of failing requests
-- sends about (1 + ratio) times the requests plus that floor, instead of
-- `attempts` times. One budget may serve many clients.
local errors = require("retry.errors")
local values = require("retry.values")
local window = require("retry.window")

local M = {}

local Budget = { __name = "retry.RetryBudget" }
Budget.__index = Budget

local KEYS = { ratio = true, min_per_second = true, ttl = true }

local function check_number(v, name, default, positive)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v == math.huge or v < 0
      or (positive and v == 0) then
    errors.invalid("RetryBudget: " .. name .. " must be a finite number "
      .. (positive and "> 0" or ">= 0") .. ", got " .. values.describe(v))
  end
  return v
end

function M.RetryBudget(o)
  if o == nil then o = {} end
  if type(o) ~= "table" then
    errors.invalid("RetryBudget needs a table of fields, got "
      .. values.describe(o))
  end
  values.check_keys(o, KEYS, "RetryBudget")
  local ttl = check_number(o.ttl, "ttl", 10, true)
  return setmetatable({
    ratio = check_number(o.ratio, "ratio", 0.2),
    min_per_second = check_number(o.min_per_second, "min_per_second", 10),
    ttl = ttl,
    refusals = 0,
    deposits = window.new(ttl),
    withdrawals = window.new(ttl),
  }, Budget)
end

function M.is_budget(v) return getmetatable(v) == Budget end

--- A request starts.
function Budget:deposit() self.deposits:add(1) end

--- A retry wants to go: true if the budget allows it (and it is counted),
-- false if refused (the refusal is counted).
function Budget:try_withdraw()
  local balance = self.min_per_second * self.ttl
    + self.ratio * self.deposits:sum() - self.withdrawals:sum()
  if balance >= 1 then
    self.withdrawals:add(1)
    return true
  end
  self.refusals = self.refusals + 1
  return false
end

--- How many retries the budget would allow now.
function Budget:balance()
  return math.floor(self.min_per_second * self.ttl
    + self.ratio * self.deposits:sum() - self.withdrawals:sum())
end

function Budget:__tostring()
  return ("retry.RetryBudget{ratio=%g, min_per_second=%g, ttl=%g}"):format(
    self.ratio, self.min_per_second, self.ttl)
end

return M
