--- JSON for load results: an encoder with sorted keys, so two results with
-- the same figures are the same text (diffable, and a merge can be compared
-- with a run byte for byte), and decoding by lua-cjson.
local M = {}

-- Tables marked with this metatable are arrays even when empty: cjson
-- (2.1.0, Debian's) would write an empty one as {}.
M.ARRAY = { __name = "retry.json.array" }

function M.array(t)
  return setmetatable(t or {}, M.ARRAY)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b",
  ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function number(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v or v == math.huge or v == -math.huge then
    error("retry.json: cannot encode " .. tostring(v), 0)
  end
  if v == math.floor(v) and math.abs(v) < 2^53 then
    return ("%d"):format(v)
  end
  -- The shortest form that reads back as the same number.
  for digits = 15, 16 do
    local text = ("%." .. digits .. "g"):format(v)
    if tonumber(text) == v then return text end
  end
  return ("%.17g"):format(v)
end

local encode

local function is_array(t)
  if getmetatable(t) == M.ARRAY then return true end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n > 0 and n == #t
end

function encode(v, out, indent, depth)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = quote(v)
  elseif t == "number" then
    out[#out + 1] = number(v)
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif v == nil then
    out[#out + 1] = "null"
  elseif t == "table" then
    local pad = indent and ("\n" .. indent:rep(depth + 1)) or ""
    local close = indent and ("\n" .. indent:rep(depth)) or ""
    if is_array(v) then
      if #v == 0 then out[#out + 1] = "[]"; return end
      -- Arrays of numbers stay on one line: histogram buckets are long.
      local flat = type(v[1]) ~= "table"
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        if not flat then out[#out + 1] = pad end
        encode(v[i], out, indent, depth + 1)
      end
      out[#out + 1] = flat and "]" or close .. "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          error("retry.json: object keys must be strings, got " .. type(k), 0)
        end
        keys[#keys + 1] = k
      end
      if #keys == 0 then out[#out + 1] = "{}"; return end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = pad .. quote(k) .. (indent and ": " or ":")
        encode(v[k], out, indent, depth + 1)
      end
      out[#out + 1] = close .. "}"
    end
  else
    error("retry.json: cannot encode a " .. t, 0)
  end
end

--- `v` as JSON text; `indent` (a string) pretty-prints.
function M.encode(v, indent)
  local out = {}
  encode(v, out, indent, 0)
  return table.concat(out)
end

--- The value of JSON text, or nil and a message. JSON null is cjson.null.
function M.decode(text)
  local ok, cjson = pcall(require, "cjson")
  if not ok then
    return nil, "lua-cjson is not installed (apt-get install lua-cjson)"
  end
  local done, v = pcall(cjson.decode, text)
  if not done then return nil, tostring(v) end
  return v
end

return M
