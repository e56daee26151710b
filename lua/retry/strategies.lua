--- Retry strategies (contract sections 3 and 8): how many attempts to make,
-- what to retry and how long to wait. Pure Lua, no state, no I/O.
--
-- A class is a table of fields with their checks. The one constructor checks
-- each field once and stores it as a plain table field, so get_timeout reads
-- fields unchecked. Fields stay live (a script may set `opts.attempts = 2`),
-- so the retry loop calls check_live before each request: the same checks,
-- run again only when a field changed since they last passed.
local errors = require("retry.errors")
local values = require("retry.values")

local M = {}

local invalid, describe, fmt = errors.invalid, values.describe, string.format
local is_callable, list_length = values.is_callable, values.list_length
local huge = math.huge

local DEFAULT_METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
  "OPTIONS", "TRACE", "CONNECT" }
local TRANSPORT, IS_TRANSPORT = errors.TRANSPORT, {}
for _, k in ipairs(TRANSPORT) do IS_TRANSPORT[k] = true end

-- `v` as an integer when it is a number with an integral value, else nil
-- (math.tointeger alone would also convert the string "3").
local function as_integer(v)
  return type(v) == "number" and math.tointeger(v) or nil
end

--[[ Field types. `must` ends "field 'x' must be ..."; `ok(v)` accepts v (a
list check also returns the index of a bad entry); `store(v)` makes the value
stored (lists are copied: no object shares one); `required` forbids nil.
math.huge is allowed only for a cap (or what a cap bounds): elsewhere it
would make an infinite wait. ]]

local SECONDS = { must = "a finite number >= 0",
  ok = function(v) return type(v) == "number" and v >= 0 and v < huge end }
local CAP = { must = "a number >= 0",
  ok = function(v) return type(v) == "number" and v >= 0 end }
local POSITIVE = { must = "a finite number > 0",
  ok = function(v) return type(v) == "number" and v > 0 and v < huge end }
local BOOLEAN = { must = "a boolean",
  ok = function(v) return type(v) == "boolean" end }
local CALLBACK = { must = "a function or nil", ok = is_callable }
local RANDOM_FUNC = { must = "a function returning [0, 1)", ok = is_callable }
local ATTEMPTS = { must = "an integer >= 1", store = as_integer,
  ok = function(v) return (as_integer(v) or 0) >= 1 end }
local JITTER = { must = '"none", "full" or "equal"', ok = function(v)
  return v == "none" or v == "full" or v == "equal"
end }

-- A list of entries passing `ok_entry`, stored with `convert` applied.
local function list_type(must, ok_entry, convert, nonempty)
  return { must = must, required = nonempty, ok = function(v)
    local n = list_length(v)
    if not n or (nonempty and n == 0) then return false end
    for i = 1, n do
      if not ok_entry(v[i]) then return false, i end
    end
    return true
  end, store = function(v)
    local out = {}
    for i = 1, #v do out[i] = convert and convert(v[i]) or v[i] end
    return out
  end }
end
local function is_status(v) return (as_integer(v) or 0) >= 100 and v <= 599 end
local STATUSES = list_type("a list of integers 100..599", is_status,
  as_integer)
local KINDS = list_type('a list of error kinds or "transport"',
  function(k) return errors.KINDS[k] or k == "transport" end)
-- A method is an HTTP token (RFC 9110 tchar), as the core checks a
-- request's: "GET POST" or "" could never match one.
local METHODS = list_type("a list of method names (HTTP tokens such as "
  .. '"GET")', function(m)
    return type(m) == "string" and m:find("^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
  end, string.upper)
local TIMEOUTS = list_type("a non-empty list of finite numbers >= 0",
  SECONDS.ok, nil, true)

-- The fields of every class, in check order: { name, type, default }.
local SHARED = {
  { "attempts", ATTEMPTS, 3 },
  { "statuses", STATUSES, {} },
  { "exceptions", KINDS, TRANSPORT },
  { "methods", METHODS, DEFAULT_METHODS },
  { "retry_all_server_errors", BOOLEAN, true },
  { "evaluate_response_callback", CALLBACK },
  { "respect_retry_after", BOOLEAN, true },
  { "max_retry_after", CAP, 120 },
  { "retry_after_statuses", STATUSES, { 429, 503 } },
  { "before_retry", CALLBACK },
}

-- Raise an `invalid` error, owned by `owner` (a class name, or the `what` of
-- check_live), unless field `f` may hold `v`.
local function check(owner, f, v)
  local ok, i = f[2].ok(v)
  if ok then return end
  local at = i and " at index " .. i or ""
  if i then v = v[i] end
  invalid(fmt("%s: field '%s' must be %s, got %s%s", owner, f[1], f[2].must,
    describe(v), at))
end

-- Metatable -> class record, for every class built here.
local CLASSES = {}

-- Field class.order[1] must not exceed field class.order[2].
local function check_order(class, self, owner)
  local a, b = class.order[1], class.order[2]
  if self[a] > self[b] then
    invalid(fmt("%s: field '%s' (%s) must not exceed field '%s' (%s)", owner,
      a, self[a], b, self[b]))
  end
end

--[[ Retry decisions, on any options table: a nil field counts as its
default, a bad entry matches nothing. ]]

local EMPTY = {}

-- The list opts[name] (nil: `default`; not a table: empty). `fname` names
-- the caller when opts is not a table.
local function list_of(opts, fname, name, default)
  if type(opts) ~= "table" then
    invalid(fname .. ": expected retry options, got " .. describe(opts))
  end
  local l = opts[name]
  if l == nil then l = default end
  return type(l) == "table" and l or EMPTY
end

--- Whether `status` is retried: it is >= 500 (unless
-- `opts.retry_all_server_errors` is false) or in `opts.statuses`.
function M.retries_status(opts, status)
  local statuses = list_of(opts, "retries_status", "statuses", EMPTY)
  if type(status) ~= "number" then return false end
  if status >= 500 and opts.retry_all_server_errors ~= false then
    return true
  end
  for _, s in ipairs(statuses) do
    if s == status then return true end
  end
  return false
end

--- Whether `method` is in `opts.methods` (nil: all nine), in any case.
function M.retries_method(opts, method)
  local methods = list_of(opts, "retries_method", "methods", DEFAULT_METHODS)
  if type(method) ~= "string" then return false end
  method = method:upper()
  -- Stored upper case by the constructor, so the plain comparison matches
  -- first; a name set later in lower case still counts.
  for _, m in ipairs(methods) do
    if m == method or (type(m) == "string" and m:upper() == method) then
      return true
    end
  end
  return false
end

--- Whether an error of `kind` (or an error object) is in `opts.exceptions`
-- (nil: the transport kinds), "transport" standing for all four.
function M.retries_error_kind(opts, kind)
  local kinds = list_of(opts, "retries_error_kind", "exceptions", TRANSPORT)
  if type(kind) == "table" then kind = kind.kind end
  if type(kind) ~= "string" then return false end
  for _, k in ipairs(kinds) do
    if k == kind or (k == "transport" and IS_TRANSPORT[kind]) then
      return true
    end
  end
  return false
end

--- Why an outcome would be retried (contract section 3's order), as a
-- function of the options, the method and the outcome alone: the reason
-- ("status", "callback", or the error kind), or nil when the outcome
-- stands. `ask_callback` false skips evaluate_response_callback (no
-- attempts are left and nobody needs the verdict).
function M.retry_reason(options, method, response, err, raise, ask_callback)
  if response == nil then
    -- Bad arguments stay bad: an `invalid` error is never retried.
    if err.kind ~= "invalid" and M.retries_error_kind(options, err.kind) then
      return err.kind
    end
    return nil
  end
  -- The method is looked up only when the status or the callback could
  -- make the outcome retried: most responses are neither.
  local by_status = M.retries_status(options, response.status)
  local callback = ask_callback and options.evaluate_response_callback
  if (by_status or callback) and M.retries_method(options, method) then
    if by_status then return "status" end
    if not callback(response) then return "callback" end
  end
  -- raise_for_status happens inside the attempt, as in aiohttp, so
  -- `exceptions = {"status"}` retries it.
  if raise and response.status >= 400
      and M.retries_error_kind(options, "status") then
    return "status"
  end
  return nil
end

-- Options objects as they were when check_live last passed them: opts ->
-- { [i] = value of field i, get_timeout = ..., lists = { i, copy, ... }
-- for the fields holding a table }. Weak: a snapshot goes with its object.
local PASSED = setmetatable({}, { __mode = "k" })

-- The names of a field list, made once per list: the comparison below runs
-- before every request.
local NAMES = setmetatable({}, { __mode = "k" })
local function names_of(fields)
  local names = NAMES[fields]
  if names == nil then
    names = {}
    for i = 1, #fields do names[i] = fields[i][1] end
    NAMES[fields] = names
  end
  return names
end

-- Whether no field of opts changed since `snap` was taken: the checks of
-- the fields only need to run again when one did. snap[i] is the value of
-- field i; for a table, snap.sizes[i] is how many entries it held and
-- snap.copies[i] a copy of them (a list edited in place is a change; a key
-- past the entries would be found by next). One loop, no calls but next:
-- it runs before every request.
local function unchanged(opts, names, snap)
  if opts.get_timeout ~= snap.get_timeout then return false end
  local sizes, copies = snap.sizes, snap.copies
  for i = 1, #names do
    local v = opts[names[i]]
    if v ~= snap[i] then return false end
    local n = sizes[i]
    if n then
      if #v ~= n then return false end
      local copy = copies[i]
      for j = 1, n do
        if v[j] ~= copy[j] then return false end
      end
      if next(v, n > 0 and n or nil) ~= nil then return false end
    end
  end
  return true
end

local function snapshot(opts, names)
  local sizes, copies = {}, {}
  local snap = { sizes = sizes, copies = copies,
    get_timeout = opts.get_timeout }
  for i = 1, #names do
    local v = opts[names[i]]
    snap[i] = v
    if type(v) == "table" then
      local n, copy = #v, {}
      for j = 1, n do copy[j] = v[j] end
      sizes[i], copies[i] = n, copy
    else
      sizes[i] = false
    end
  end
  return snap
end

--- Check, before each request, the fields the retry loop and get_timeout
-- read, naming one set to a bad value since construction, owned by `what`
-- ("retry_options"). An object built here must keep every field that has a
-- default; a duck-typed table's shared fields are checked where present.
-- The checks run again only when a field changed (replaced, or a list
-- edited in place) since they last passed: most requests compare values.
function M.check_live(opts, what)
  local class = CLASSES[getmetatable(opts)]
  local fields = class and class.fields or SHARED
  local names = names_of(fields)
  local snap = PASSED[opts]
  if snap and unchanged(opts, names, snap) then return end
  for _, f in ipairs(fields) do
    local v = opts[f[1]]
    if v ~= nil or (class and (f[3] ~= nil or f[2].required)) then
      check(what, f, v)
    end
  end
  if not is_callable(opts.get_timeout) then
    invalid(fmt("%s: get_timeout must be a function, got %s", what,
      describe(opts.get_timeout)))
  end
  if class and class.order then check_order(class, opts, what) end
  PASSED[opts] = snapshot(opts, names)
end

--- Whether `x` can serve as retry options: an object built here, or any
-- table with a callable `get_timeout` and an integral number `attempts`.
function M.is_options(x)
  if type(x) ~= "table" then return false end
  if CLASSES[getmetatable(x)] then return true end
  return is_callable(x.get_timeout) and as_integer(x.attempts) ~= nil
end

--[[ Classes ]]

-- Make class `name` with its own `fields` (in check and display order) and
-- `wait(self, n, response, ctx)`, the body of get_timeout, called with a
-- checked self and attempt. `extra` may hold `order` (see check_order) and
-- `prepare(args) -> args`. Returns the constructor.
local function define(name, own, wait, extra)
  local class = extra or {}
  local meta, fields, known = { __name = "retry." .. name }, {}, {}
  for _, group in ipairs({ SHARED, own }) do
    for _, f in ipairs(group) do
      fields[#fields + 1], known[f[1]] = f, true
    end
  end
  class.name, class.fields, CLASSES[meta] = name, fields, class

  meta.__index = {
    retries_status = M.retries_status,
    retries_method = M.retries_method,
    retries_error_kind = M.retries_error_kind,
    get_timeout = function(self, attempt, response, ctx)
      if getmetatable(self) ~= meta then
        invalid(fmt("%s:get_timeout: self must be a %s, got %s (call it as "
          .. "opts:get_timeout(n))", name, meta.__name, describe(self)))
      end
      local n = as_integer(attempt)
      if not n or n < 1 then
        invalid(fmt("%s:get_timeout: argument 'attempt' must be an integer "
          .. ">= 1, got %s", name, describe(attempt)))
      end
      return wait(self, n, response, ctx)
    end,
  }

  -- attempts, then the own numbers, lists and strings set.
  function meta.__tostring(self)
    local parts = { "attempts=" .. tostring(rawget(self, "attempts")) }
    for _, f in ipairs(own) do
      local v = rawget(self, f[1])
      if type(v) == "table" then
        local ok, items = pcall(table.concat, v, ", ")
        v = ok and "{" .. items .. "}" or nil
      end
      if type(v) == "number" or type(v) == "string" and v ~= f[3] then
        parts[#parts + 1] = f[1] .. "=" .. tostring(v)
      end
    end
    return meta.__name .. "{" .. table.concat(parts, ", ") .. "}"
  end

  return function(args)
    if args == nil then args = {} end
    if type(args) ~= "table" then
      invalid(fmt("%s: expected a table of fields, got %s", name,
        describe(args)))
    end
    if class.prepare then args = class.prepare(args) end
    for k in pairs(args) do
      if not known[k] then
        invalid(fmt("%s: unknown field %s", name,
          type(k) == "string" and "'" .. k .. "'" or describe(k)))
      end
    end
    local self = {}
    for _, f in ipairs(fields) do
      local v, t = args[f[1]], f[2]
      if v == nil then v = f[3] end
      if v ~= nil or t.required then check(name, f, v) end
      if v ~= nil and t.store then v = t.store(v) end
      self[f[1]] = v
    end
    if class.order then check_order(class, self, name) end
    return setmetatable(self, meta)
  end
end

-- The next value of self.random_func, meant to be in [0, 1) (1 itself is
-- let through: it harms no formula). Only its type can be checked
-- beforehand, so its result is checked here: out of range, it would be
-- blamed on get_timeout's result, or pass unseen.
local function random(self)
  local r = self.random_func()
  if type(r) ~= "number" or not (r >= 0 and r <= 1) then
    invalid(fmt("%s: field 'random_func' must return a number in [0, 1), "
      .. "got %s", CLASSES[getmetatable(self)].name, describe(r)))
  end
  return r
end

-- min(start_timeout * factor^(n-1), max_timeout); 0 for start_timeout 0,
-- not the NaN of 0 * inf once factor^(n-1) overflows.
local function exponential(self, n)
  if self.start_timeout == 0 then return 0.0 end
  return math.min(self.start_timeout * self.factor ^ (n - 1), self.max_timeout)
end

--- `RetryOptionsBase{...}`: the shared fields and a `get_timeout` field,
-- `function(self, attempt, response, ctx) -> seconds`: a custom strategy.
M.RetryOptionsBase = define("RetryOptionsBase", {
  { "get_timeout", { must = "a function(self, attempt, response)",
    ok = is_callable } },
}, function()
  invalid("RetryOptionsBase: no get_timeout: give a 'get_timeout' field, "
    .. "function(self, attempt, response) -> seconds, or use a concrete "
    .. "strategy such as ExponentialRetry")
end)

--- `ExponentialRetry{...}`: exp(n) = min(start_timeout * factor^(n-1),
-- max_timeout). `jitter` "none" waits exp(n), "full" random_func() * exp(n),
-- "equal" exp(n)/2 + random_func() * exp(n)/2.
M.ExponentialRetry = define("ExponentialRetry", {
  { "start_timeout", SECONDS, 0.1 }, { "max_timeout", CAP, 30.0 },
  { "factor", CAP, 2.0 }, { "jitter", JITTER, "none" },
  { "random_func", RANDOM_FUNC, math.random },
}, function(self, n)
  local e = exponential(self, n)
  if self.jitter == "full" then return random(self) * e end
  if self.jitter == "equal" then return e / 2 + random(self) * e / 2 end
  return e
end)

--- `RandomRetry{...}`: min_timeout + random_func() * (max_timeout -
-- min_timeout), where min_timeout <= max_timeout.
M.RandomRetry = define("RandomRetry", {
  { "min_timeout", SECONDS, 0.1 }, { "max_timeout", SECONDS, 3.0 },
  { "random_func", RANDOM_FUNC, math.random },
}, function(self)
  local lo = self.min_timeout
  return lo + random(self) * (self.max_timeout - lo)
end, { order = { "min_timeout", "max_timeout" } })

--- `ListRetry{timeouts = {...}}` or `ListRetry({...})`: timeouts[n], the
-- last one past the end. `attempts` defaults to #timeouts (set once).
M.ListRetry = define("ListRetry", { { "timeouts", TIMEOUTS } },
  function(self, n)
    local ts = self.timeouts
    return ts[math.min(n, #ts)]
  end, { prepare = function(args)
    local named, positional = {}, {}
    for k, v in pairs(args) do
      if math.type(k) == "integer" then positional[k] = v else named[k] = v end
    end
    if next(positional) ~= nil then
      if named.timeouts ~= nil then
        invalid("ListRetry: field 'timeouts' given twice: as the list part "
          .. "of the table and as the 'timeouts' field")
      end
      named.timeouts = positional
    end
    local n = list_length(named.timeouts) or 0
    if named.attempts == nil and n > 0 then named.attempts = n end
    return named
  end })

--- `FibonacciRetry{...}`: min(multiplier * F(n), max_timeout), F = 2, 3, 5,
-- 8, ... from n alone, so a shared object keeps no state.
M.FibonacciRetry = define("FibonacciRetry", {
  { "multiplier", SECONDS, 1.0 }, { "max_timeout", CAP, 3.0 },
}, function(self, n)
  local m, cap = self.multiplier, self.max_timeout
  if m == 0 then return 0.0 end
  local a, b = 1.0, 2.0 -- F(k - 1), F(k); stop once capped
  for _ = 2, n do
    if m * b >= cap then return cap end
    a, b = b, a + b
  end
  return math.min(m * b, cap)
end)

--- `JitterRetry{...}`: exp(n) + (random_func() * random_interval_size) ^
-- factor, the jitter added after the cap, as in aiohttp-retry.
M.JitterRetry = define("JitterRetry", {
  { "start_timeout", SECONDS, 0.1 }, { "max_timeout", CAP, 30.0 },
  { "factor", SECONDS, 2.0 }, { "random_interval_size", SECONDS, 2.0 },
  { "random_func", RANDOM_FUNC, math.random },
}, function(self, n)
  local u = random(self) * self.random_interval_size
  return exponential(self, n) + u ^ self.factor
end)

--- `DecorrelatedJitterRetry{...}`: min(max_timeout, base + random_func() *
-- (3 * previous - base)), previous being `ctx.previous_wait` (this
-- strategy's wait before the request's previous retry) or base. `base` must
-- be > 0: with 0 every wait would be 0.
M.DecorrelatedJitterRetry = define("DecorrelatedJitterRetry", {
  { "base", POSITIVE, 0.1 }, { "max_timeout", CAP, 30.0 },
  { "random_func", RANDOM_FUNC, math.random },
}, function(self, _, _, ctx)
  local base = self.base
  local previous = type(ctx) == "table" and ctx.previous_wait or base
  if not SECONDS.ok(previous) then
    invalid("DecorrelatedJitterRetry:get_timeout: ctx.previous_wait must be "
      .. SECONDS.must .. ", got " .. describe(previous))
  end
  return math.min(self.max_timeout, base + random(self) * (3 * previous - base))
end, { order = { "base", "max_timeout" } })

-- The strategies whose wait depends on the attempt's number alone (an
-- ExponentialRetry without jitter).
local FIXED = {
  [getmetatable(M.ExponentialRetry{})] = function(o)
    return o.jitter == "none"
  end,
  [getmetatable(M.ListRetry{ 0 })] = true,
  [getmetatable(M.FibonacciRetry{})] = true,
}

--- The attempts n of `options` when its get_timeout depends on nothing
-- but the attempt's number (a built-in strategy without randomness, and
-- get_timeout not replaced) and n is at most `most`; nil otherwise.
-- core.request (src/lua_run.c) then makes the request's retries in C.
function M.fixed_attempts(options, most)
  local fixed = FIXED[getmetatable(options)]
  if not fixed or rawget(options, "get_timeout") ~= nil
      or (fixed ~= true and not fixed(options)) then
    return nil
  end
  local n = as_integer(options.attempts)
  if not n or n < 1 or n > most then return nil end
  return n
end

--- The waits of `options` before attempts 2 to n ({} for one attempt),
-- when fixed_attempts gives n; nil otherwise. A load's driver
-- (src/lua_drive.c) retries with them in C.
function M.fixed_waits(options, most)
  local n = M.fixed_attempts(options, most)
  if not n then return nil end
  local waits = {}
  for k = 1, n - 1 do
    local ok, w = pcall(options.get_timeout, options, k)
    if not ok or not SECONDS.ok(w) then return nil end
    waits[k] = w
  end
  return waits
end

return M
