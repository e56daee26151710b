--- The `retry` module: an asynchronous HTTP client with aiohttp-retry's
-- retry policies. See README.md for the API; ../shared/design/lua-api.md is
-- the contract it follows.
local breaker = require("retry.breaker")
local budget = require("retry.budget")
local client = require("retry.client")
local core = require("retry.core")
local errors = require("retry.errors")
local http = require("retry.http")
local load = require("retry.load")
local result = require("retry.result")
local strategies = require("retry.strategies")
local task = require("retry.task")

local M = {
  _VERSION = "lretry " .. core.version,
  run = task.run,
  spawn = task.spawn,
  gather = task.gather,
  current_task = task.current,
  sleep = core.sleep,
  now = core.now,
  is_error = errors.is_error,
  errors = errors,
  RetryClient = client.RetryClient,
  RequestParams = client.RequestParams,
  RetryOptionsBase = strategies.RetryOptionsBase,
  ExponentialRetry = strategies.ExponentialRetry,
  RandomRetry = strategies.RandomRetry,
  ListRetry = strategies.ListRetry,
  FibonacciRetry = strategies.FibonacciRetry,
  JitterRetry = strategies.JitterRetry,
  DecorrelatedJitterRetry = strategies.DecorrelatedJitterRetry,
  RetryBudget = budget.RetryBudget,
  CircuitBreaker = breaker.CircuitBreaker,
  load = load.load,
  LoadResult = { from_json = result.from_json, merge = result.merge },
}

--- One attempt, no retries: `retry.request(method, url, opts)` returns a
-- Response or raises an error object. opts: headers, params, data, json,
-- auth, timeout, connect_timeout.
function M.request(method, url, opts)
  local resp, err = http.send(http.build(method, url, opts))
  if not resp then
    err.attempt = 1
    error(err, 2)
  end
  return resp
end

return M
