--- Retry strategies (contract section 3): the options objects that say how
-- many attempts to make, what to retry and how long to wait in between.
-- Pure Lua; owns no state between requests and does no I/O.
--
-- Every constructor takes one table of fields (or nothing, for defaults) and
-- returns an options object: a plain table holding the fields, with a
-- metatable per class (`__name` "retry.<Class>", `__tostring`). Fields stay
-- plain table fields, and every method reads them when called, so a change
-- such as `opts.attempts = 2` or `opts.start_timeout = 1` takes effect on the
-- next call.
local errors = require("retry.errors")
local values = require("retry.values")

local M = {}

local math_type, tointeger = math.type, math.tointeger
local is_callable, list_length = values.is_callable, values.list_length

-- The nine HTTP methods retried by default (the `methods` default).
local DEFAULT_METHODS = {
  "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE",
  "CONNECT",
}

-- The transport kinds: the `exceptions` default, and what "transport" means.
local TRANSPORT = errors.TRANSPORT

-- Every error kind, sorted, for messages.
local KIND_LIST = (function()
  local kinds = {}
  for k in pairs(errors.KINDS) do kinds[#kinds + 1] = k end
  table.sort(kinds)
  return table.concat(kinds, ", ")
end)()

-- The fields every class accepts, in validation order.
local SHARED_FIELDS = {
  "attempts", "statuses", "exceptions", "methods", "retry_all_server_errors",
  "evaluate_response_callback",
}

-- Metatable -> class record, for every class built here (see is_options).
local CLASS_OF_META = {}

--[[ Small helpers ]]

-- `v` as an integer when it is a number with an integral value, else nil.
-- (math.tointeger alone would also convert the string "3".)
local function as_integer(v)
  if type(v) ~= "number" then return nil end
  return tointeger(v)
end

local describe = values.describe


-- Raise the `invalid` error for a bad field of class `cname`.
local function bad_field(cname, field, must, got)
  errors.invalid(string.format("%s: field '%s' must be %s, got %s",
    cname, field, must, describe(got)), 3)
end

-- Class name -> set of the number fields that may be math.huge: a cap
-- (max_timeout of the capped strategies) or what a cap bounds (Exponential's
-- factor). Every other number field must be finite, or a wait would be.
local HUGE_OK = {}

-- A number >= 0 (not NaN), finite unless the field may be math.huge.
local function check_non_negative(cname, field, v)
  local huge_ok = HUGE_OK[cname] and HUGE_OK[cname][field]
  if type(v) ~= "number" or v ~= v or v < 0
      or (v == math.huge and not huge_ok) then
    bad_field(cname, field, huge_ok and "a number >= 0"
      or "a finite number >= 0", v)
  end
  return v
end

-- A number in [0, 1] as returned by a random_func (checked at call time).
local function random_value(self, cname)
  if not is_callable(self.random_func) then
    errors.invalid(string.format(
      "%s: field 'random_func' must be a function returning [0, 1), got %s",
      cname, describe(self.random_func)), 3)
  end
  local r = self.random_func()
  if type(r) ~= "number" or r ~= r then
    errors.invalid(string.format(
      "%s: field 'random_func' must return a number in [0, 1), got %s",
      cname, describe(r)), 3)
  end
  return r
end

-- Read numeric field `field` of `self` at call time, naming it if a later
-- assignment broke it.
local function num(self, cname, field)
  return check_non_negative(cname, field, self[field])
end

-- The attempt argument of get_timeout: an integer >= 1. `self` must be an
-- options object (a call as opts.get_timeout(3) passes 3 as self).
local function check_attempt(cname, attempt, self)
  if type(self) ~= "table" then
    errors.invalid(string.format("%s:get_timeout: expected retry options as "
      .. "self, got %s (call it as opts:get_timeout(n))", cname,
      describe(self)), 3)
  end
  local n = as_integer(attempt)
  if not n or n < 1 then
    errors.invalid(string.format(
      "%s:get_timeout: argument 'attempt' must be an integer >= 1, got %s",
      cname, describe(attempt)), 3)
  end
  return n
end

--[[ Shared field validation ]]

-- Each takes (class name, given value or nil) and returns the stored value.
local SHARED_CHECKS = {}

function SHARED_CHECKS.attempts(cname, v)
  if v == nil then return 3 end
  local n = as_integer(v)
  if not n or n < 1 then bad_field(cname, "attempts", "an integer >= 1", v) end
  return n
end

function SHARED_CHECKS.statuses(cname, v)
  if v == nil then return {} end
  local n = list_length(v)
  if not n then bad_field(cname, "statuses", "a list of integers", v) end
  local out = {}
  for i = 1, n do
    local s = as_integer(v[i])
    if not s or s < 100 or s > 599 then
      errors.invalid(string.format(
        "%s: field 'statuses' must hold integers 100..599, got %s at index %d",
        cname, describe(v[i]), i), 2)
    end
    out[i] = s
  end
  return out
end

function SHARED_CHECKS.exceptions(cname, v)
  if v == nil then return { table.unpack(TRANSPORT) } end
  local n = list_length(v)
  if not n then
    bad_field(cname, "exceptions", "a list of error kinds", v)
  end
  local out = {}
  for i = 1, n do
    local k = v[i]
    if type(k) ~= "string" or not (errors.KINDS[k] or k == "transport") then
      errors.invalid(string.format(
        "%s: field 'exceptions' must hold error kinds (%s) or "
        .. "\"transport\", got %s at index %d", cname, KIND_LIST,
        describe(k), i), 2)
    end
    out[i] = k
  end
  return out
end

function SHARED_CHECKS.methods(cname, v)
  if v == nil then return { table.unpack(DEFAULT_METHODS) } end
  local n = list_length(v)
  if not n then bad_field(cname, "methods", "a list of method names", v) end
  local out = {}
  for i = 1, n do
    local m = v[i]
    if type(m) ~= "string" or m == "" then
      errors.invalid(string.format(
        "%s: field 'methods' must hold non-empty strings, got %s at index %d",
        cname, describe(m), i), 2)
    end
    out[i] = m:upper()
  end
  return out
end

function SHARED_CHECKS.retry_all_server_errors(cname, v)
  if v == nil then return true end
  if type(v) ~= "boolean" then
    bad_field(cname, "retry_all_server_errors", "a boolean", v)
  end
  return v
end

function SHARED_CHECKS.evaluate_response_callback(cname, v)
  if v ~= nil and not is_callable(v) then
    bad_field(cname, "evaluate_response_callback", "a function or nil", v)
  end
  return v
end

--[[ Retry decisions, usable on any options table ]]

--- Whether a response with `status` should be retried by `opts` (any options
-- table, built here or duck-typed): true when `status >= 500` and
-- `opts.retry_all_server_errors` (nil counts as true), or when `status` is
-- in the list `opts.statuses` (nil counts as `{}`). The attempts limit, the
-- method check and the callback are the retry loop's business.
-- @param opts options table
-- @param status integer HTTP status
-- @return boolean
function M.retries_status(opts, status)
  if type(opts) ~= "table" then
    errors.invalid("retries_status: expected retry options, got " .. describe(opts), 2)
  end
  if type(status) ~= "number" then return false end
  local all = opts.retry_all_server_errors
  if status >= 500 and (all == nil or all) then return true end
  local list = opts.statuses
  if type(list) ~= "table" then return false end
  for _, s in ipairs(list) do
    if s == status then return true end
  end
  return false
end

--- Whether requests with HTTP `method` may be retried by `opts`: `method` is
-- compared case-insensitively, at call time, with the list `opts.methods`
-- (nil counts as the nine standard methods).
-- @param opts options table
-- @param method string, any case
-- @return boolean
function M.retries_method(opts, method)
  if type(opts) ~= "table" then
    errors.invalid("retries_method: expected retry options, got " .. describe(opts), 2)
  end
  if type(method) ~= "string" then return false end
  local list = opts.methods
  if list == nil then list = DEFAULT_METHODS end
  if type(list) ~= "table" then return false end
  method = method:upper()
  for _, m in ipairs(list) do
    if type(m) == "string" and m:upper() == method then return true end
  end
  return false
end

--- Whether a transport error of `kind` should be retried by `opts`: `kind`
-- is looked up in the list `opts.exceptions` (nil counts as the four
-- transport kinds), where the entry "transport" stands for connect, dns,
-- timeout and network. `kind` may also be an error object (its `.kind` is
-- used).
-- @param opts options table
-- @param kind string error kind, or an error object
-- @return boolean
function M.retries_error_kind(opts, kind)
  if type(opts) ~= "table" then
    errors.invalid("retries_error_kind: expected retry options, got " .. describe(opts), 2)
  end
  if type(kind) == "table" then kind = kind.kind end
  if type(kind) ~= "string" then return false end
  local list = opts.exceptions
  if list == nil then list = TRANSPORT end
  if type(list) ~= "table" then return false end
  local is_transport = false
  for _, t in ipairs(TRANSPORT) do
    if t == kind then is_transport = true end
  end
  for _, k in ipairs(list) do
    if k == kind or (k == "transport" and is_transport) then return true end
  end
  return false
end

-- The shared fields that hold lists.
local LIST_FIELDS = { "statuses", "exceptions", "methods" }

--- Check the fields the retry loop reads, at the start of each request:
-- a live field set to a bad value since construction (`opts.attempts =
-- "x"`) is named here instead of failing as a Lua runtime error later.
-- `what` names the options in the message ("retry_options").
function M.check_live(opts, what)
  local attempts = opts.attempts
  if math_type(attempts) ~= "integer" or attempts < 1 then
    errors.invalid(string.format("%s: field 'attempts' must be an integer "
      .. ">= 1, got %s", what, describe(attempts)), 2)
  end
  if not is_callable(opts.get_timeout) then
    errors.invalid(string.format("%s: get_timeout must be a function, got %s",
      what, describe(opts.get_timeout)), 2)
  end
  local callback = opts.evaluate_response_callback
  if callback ~= nil and not is_callable(callback) then
    errors.invalid(string.format("%s: field 'evaluate_response_callback' "
      .. "must be a function or nil, got %s", what, describe(callback)), 2)
  end
  local all = opts.retry_all_server_errors
  if all ~= nil and type(all) ~= "boolean" then
    errors.invalid(string.format("%s: field 'retry_all_server_errors' must "
      .. "be a boolean, got %s", what, describe(all)), 2)
  end
  for i = 1, #LIST_FIELDS do
    local field = LIST_FIELDS[i]
    local v = opts[field]
    if v ~= nil and type(v) ~= "table" then
      errors.invalid(string.format("%s: field '%s' must be a list, got %s",
        what, field, describe(v)), 2)
    end
  end
  -- A built-in strategy's number fields, so a bad one stops the request
  -- before its first attempt rather than at the first wait.
  local class = CLASS_OF_META[getmetatable(opts)]
  local numeric = class and class.numeric
  if numeric then
    for i = 1, #numeric do
      check_non_negative(class.name, numeric[i], opts[numeric[i]])
    end
  end
end

--- Whether `x` can serve as retry options: true for every object built by
-- this module, and for any table with a callable `get_timeout` and an
-- integral number `attempts` (duck typing for user-made strategies).
-- @param x any value
-- @return boolean
function M.is_options(x)
  if type(x) ~= "table" then return false end
  if CLASS_OF_META[getmetatable(x)] then return true end
  return is_callable(x.get_timeout) and as_integer(x.attempts) ~= nil
end

--[[ Classes ]]

-- Build a class from a record:
--   name            class name ("ExponentialRetry")
--   fields          extra field names, in validation and display order
--   checks          field name -> function(cname, value) -> stored value
--   prepare(args)   optional: rewrite the argument table (ListRetry)
--   finish(self, args)  optional: cross-field checks and derived defaults
--   get_timeout(self, attempt, response)
local function define(class)
  local cname = class.name
  local known = {}
  for _, f in ipairs(SHARED_FIELDS) do known[f] = true end
  for _, f in ipairs(class.fields) do known[f] = true end

  local methods = {
    get_timeout = class.get_timeout,
    retries_status = M.retries_status,
    retries_method = M.retries_method,
    retries_error_kind = M.retries_error_kind,
  }

  local meta = { __name = "retry." .. cname, __index = methods }

  function meta.__tostring(self)
    local parts = { "attempts=" .. tostring(rawget(self, "attempts")) }
    for _, f in ipairs(class.fields) do
      local v = rawget(self, f)
      if type(v) == "number" then
        parts[#parts + 1] = f .. "=" .. tostring(v)
      elseif f == "timeouts" and type(v) == "table" then
        local ts = {}
        for i, t in ipairs(v) do ts[i] = tostring(t) end
        parts[#parts + 1] = "timeouts={" .. table.concat(ts, ", ") .. "}"
      end
    end
    return meta.__name .. "{" .. table.concat(parts, ", ") .. "}"
  end

  CLASS_OF_META[meta] = class

  return function(args)
    if args == nil then args = {} end
    if type(args) ~= "table" then
      errors.invalid(string.format("%s: expected a table of fields, got %s",
        cname, describe(args)), 2)
    end
    if class.prepare then args = class.prepare(args) end
    for k in pairs(args) do
      if not known[k] then
        if type(k) == "string" then
          errors.invalid(string.format("%s: unknown field '%s'", cname, k), 2)
        end
        errors.invalid(string.format(
          "%s: unknown field %s (fields are named, e.g. {attempts = 3})",
          cname, describe(k)), 2)
      end
    end
    local self = {}
    for _, f in ipairs(SHARED_FIELDS) do
      self[f] = SHARED_CHECKS[f](cname, args[f])
    end
    for _, f in ipairs(class.fields) do
      self[f] = class.checks[f](cname, args[f])
    end
    if class.finish then class.finish(self, args) end
    return setmetatable(self, meta)
  end
end

-- The check makers made by non_negative, so with_checks knows which fields
-- are numbers (check_live looks at them before each request).
local NUMERIC = setmetatable({}, { __mode = "k" })

-- A check for a number field >= 0 with a default.
local function non_negative(default, huge_ok)
  local make = function(cname, field_name)
    if huge_ok then
      HUGE_OK[cname] = HUGE_OK[cname] or {}
      HUGE_OK[cname][field_name] = true
    end
    return function(_, v)
      if v == nil then return default end
      return check_non_negative(cname, field_name, v)
    end
  end
  NUMERIC[make] = true
  return make
end

-- Fill class.checks from class.specs (field -> check maker), and
-- class.numeric with the names of the number fields.
local function with_checks(class)
  class.checks = {}
  class.numeric = {}
  for f, make in pairs(class.specs) do
    class.checks[f] = make(class.name, f)
    if NUMERIC[make] then class.numeric[#class.numeric + 1] = f end
  end
  table.sort(class.numeric)
  return class
end

-- A random_func field: callable, default math.random.
local function random_func_check(cname, field_name)
  return function(_, v)
    if v == nil then return math.random end
    if not is_callable(v) then
      bad_field(cname, field_name, "a function returning [0, 1)", v)
    end
    return v
  end
end

-- min(start_timeout * factor^(n-1), max_timeout), reading live fields.
local function exponential(self, cname, n)
  local start = num(self, cname, "start_timeout")
  local factor = num(self, cname, "factor")
  local cap = num(self, cname, "max_timeout")
  -- 0 * inf would be NaN once factor^(n-1) overflows.
  if start == 0 then return math.min(0.0, cap) end
  local t = start * factor ^ (n - 1)
  if t > cap then return cap end
  return t
end

--- `RetryOptionsBase{...}`: only the shared fields, plus a `get_timeout`
-- field `function(self, attempt, response) -> seconds` making a custom
-- strategy. Without one, `opts:get_timeout()` raises an `invalid` error.
-- @param args table of fields, or nil
-- @return options object
M.RetryOptionsBase = define(with_checks({
  name = "RetryOptionsBase",
  fields = { "get_timeout" },
  specs = {
    get_timeout = function(cname, f)
      return function(_, v)
        if v ~= nil and not is_callable(v) then
          bad_field(cname, f, "a function(self, attempt, response)", v)
        end
        return v
      end
    end,
  },
  get_timeout = function()
    errors.invalid("RetryOptionsBase: no get_timeout: give a 'get_timeout' "
      .. "field, function(self, attempt, response) -> seconds, or use a "
      .. "concrete strategy such as ExponentialRetry", 2)
  end,
}))

--- `ExponentialRetry{...}`: fields `start_timeout` (0.1), `max_timeout`
-- (30.0), `factor` (2.0), all numbers >= 0; waits
-- `min(start_timeout * factor^(n-1), max_timeout)`. A `start_timeout`
-- above `max_timeout` is allowed (every wait is then `max_timeout`).
-- @param args table of fields, or nil
-- @return options object
M.ExponentialRetry = define(with_checks({
  name = "ExponentialRetry",
  fields = { "start_timeout", "max_timeout", "factor" },
  specs = {
    start_timeout = non_negative(0.1),
    max_timeout = non_negative(30.0, true),
    factor = non_negative(2.0, true),
  },
  get_timeout = function(self, attempt)
    return exponential(self, "ExponentialRetry",
      check_attempt("ExponentialRetry", attempt, self))
  end,
}))

--- `RandomRetry{...}`: fields `min_timeout` (0.1), `max_timeout` (3.0),
-- numbers >= 0 with `min_timeout <= max_timeout`, and `random_func`
-- (math.random), called with no argument for a number in [0, 1); waits
-- `min_timeout + random_func() * (max_timeout - min_timeout)`.
-- @param args table of fields, or nil
-- @return options object
M.RandomRetry = define(with_checks({
  name = "RandomRetry",
  fields = { "min_timeout", "max_timeout", "random_func" },
  specs = {
    min_timeout = non_negative(0.1),
    max_timeout = non_negative(3.0),
    random_func = random_func_check,
  },
  finish = function(self)
    if self.min_timeout > self.max_timeout then
      errors.invalid(string.format("RandomRetry: field 'min_timeout' (%s) "
        .. "must not exceed field 'max_timeout' (%s)",
        tostring(self.min_timeout), tostring(self.max_timeout)), 3)
    end
  end,
  get_timeout = function(self, attempt)
    local cname = "RandomRetry"
    check_attempt(cname, attempt, self)
    local lo = num(self, cname, "min_timeout")
    local hi = num(self, cname, "max_timeout")
    return lo + random_value(self, cname) * (hi - lo)
  end,
}))

-- ListRetry accepts its timeouts as the positional part of the table.
local function list_prepare(args)
  local positional = {}
  local has_positional = false
  for k in pairs(args) do
    if math_type(k) == "integer" then has_positional = true; break end
  end
  if not has_positional then return args end
  if args.timeouts ~= nil then
    errors.invalid("ListRetry: field 'timeouts' given twice: as the list "
      .. "part of the table and as the 'timeouts' field", 3)
  end
  local rest = {}
  for k, v in pairs(args) do
    if math_type(k) == "integer" then positional[k] = v else rest[k] = v end
  end
  rest.timeouts = positional
  return rest
end

--- `ListRetry{timeouts = {...}}` or `ListRetry({...})`: `timeouts` is a
-- required non-empty list of numbers >= 0; waits `timeouts[n]`, or the last
-- entry once n is past the end. `attempts` defaults to `#timeouts`; an
-- explicit `attempts` is kept as given. `attempts` is computed once, so a
-- later change of `opts.timeouts` does not change it.
-- @param args table of fields or list of timeouts
-- @return options object
M.ListRetry = define(with_checks({
  name = "ListRetry",
  fields = { "timeouts" },
  prepare = list_prepare,
  specs = {
    timeouts = function(cname, f)
      return function(_, v)
        if v == nil then
          errors.invalid(cname .. ": field 'timeouts' is required (a "
            .. "non-empty list of numbers >= 0)", 3)
        end
        local n = list_length(v)
        if not n or n == 0 then
          bad_field(cname, f, "a non-empty list of numbers >= 0", v)
        end
        local out = {}
        for i = 1, n do
          local t = v[i]
          if type(t) ~= "number" or t ~= t or t < 0 then
            errors.invalid(string.format("%s: field 'timeouts' must hold "
              .. "numbers >= 0, got %s at index %d", cname, describe(t), i), 3)
          end
          out[i] = t
        end
        return out
      end
    end,
  },
  finish = function(self, args)
    if args.attempts == nil then self.attempts = #self.timeouts end
  end,
  get_timeout = function(self, attempt)
    local cname = "ListRetry"
    local n = check_attempt(cname, attempt, self)
    local ts = self.timeouts
    local len = type(ts) == "table" and #ts or 0
    if len == 0 then
      errors.invalid(cname .. ": field 'timeouts' must be a non-empty list "
        .. "of numbers, got " .. describe(ts), 2)
    end
    if n > len then n = len end
    return ts[n]
  end,
}))

--- `FibonacciRetry{...}`: fields `multiplier` (1.0), `max_timeout` (3.0),
-- numbers >= 0; waits `min(multiplier * F(n), max_timeout)` with
-- F = 2, 3, 5, 8, 13, ... computed from n alone (no counter is kept, so
-- concurrent requests sharing the object see the same waits).
-- @param args table of fields, or nil
-- @return options object
M.FibonacciRetry = define(with_checks({
  name = "FibonacciRetry",
  fields = { "multiplier", "max_timeout" },
  specs = {
    multiplier = non_negative(1.0),
    max_timeout = non_negative(3.0, true),
  },
  get_timeout = function(self, attempt)
    local cname = "FibonacciRetry"
    local n = check_attempt(cname, attempt, self)
    local m = num(self, cname, "multiplier")
    local cap = num(self, cname, "max_timeout")
    if m == 0 then return math.min(0.0, cap) end
    -- F(0) = 1, F(1) = 2, F(k) = F(k-1) + F(k-2); stop once capped.
    local a, b = 1.0, 2.0
    for _ = 2, n do
      if m * b >= cap then return cap end
      a, b = b, a + b
    end
    local t = m * b
    if t > cap then return cap end
    return t
  end,
}))

--- `JitterRetry{...}`: the ExponentialRetry fields plus
-- `random_interval_size` (2.0, a number >= 0) and `random_func`
-- (math.random); waits `exponential(n) + u ^ factor` where
-- `u = random_func() * random_interval_size` is uniform in
-- [0, random_interval_size). The jitter is added after the `max_timeout`
-- cap, as in aiohttp-retry.
-- @param args table of fields, or nil
-- @return options object
M.JitterRetry = define(with_checks({
  name = "JitterRetry",
  fields = {
    "start_timeout", "max_timeout", "factor", "random_interval_size",
    "random_func",
  },
  specs = {
    start_timeout = non_negative(0.1),
    max_timeout = non_negative(30.0, true),
    factor = non_negative(2.0),
    random_interval_size = non_negative(2.0),
    random_func = random_func_check,
  },
  get_timeout = function(self, attempt)
    local cname = "JitterRetry"
    local n = check_attempt(cname, attempt, self)
    local base = exponential(self, cname, n)
    local size = num(self, cname, "random_interval_size")
    local u = random_value(self, cname) * size
    return base + u ^ num(self, cname, "factor")
  end,
}))

return M
