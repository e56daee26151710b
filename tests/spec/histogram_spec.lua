-- The latency histogram of retry.core (src/histogram.c through
-- src/lua_histogram.c): percentiles against exact ones computed here,
-- export/import round trips, exact merging, and an `invalid` error naming
-- the problem for every bad argument and every rule an import checks.
-- Needs no server.
local core = require("retry.core")
local expect = require("expect")

local SEED = 20261130

-- n samples in seconds from gen, with a fixed seed so failures reproduce.
local function samples(n, gen)
  math.randomseed(SEED)
  local xs = {}
  for i = 1, n do xs[i] = gen() end
  return xs
end

local function record_all(h, xs)
  for _, x in ipairs(xs) do h:record(x) end
  return h
end

-- Exact nearest-rank percentile of sorted xs for p = num / den * 100, in
-- integers: a rank from 99.9 / 100 * n in floating point can be one off.
local function exact(sorted, num, den)
  local n = #sorted
  local rank = (n * num + den - 1) // den
  if rank < 1 then rank = 1 end
  return sorted[rank]
end

local function close_to(want, got, rel)
  return math.abs(got - want) <= rel * math.abs(want)
end

local DISTS = {
  { "uniform 1us..1s",
    function() return 1e-6 + math.random() * (1 - 1e-6) end },
  { "lognormal", function()
    -- Box-Muller around a 2 ms median.
    local u, v = 1 - math.random(), math.random()
    local z = math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * v)
    return 0.002 * math.exp(1.2 * z)
  end },
  { "bimodal", function()
    if math.random() < 0.9 then return 0.001 * (0.9 + 0.2 * math.random()) end
    return 0.2 * (0.9 + 0.2 * math.random())
  end },
  { "whole ns below 256", function() return math.random(0, 255) / 1e9 end },
}

local PCTS = { { 50, 1, 2 }, { 90, 9, 10 }, { 99, 99, 100 },
  { 99.9, 999, 1000 } }

-- A valid export with three values, for the import checks to break one
-- rule at a time.
local function valid()
  local h = core.histogram()
  h:record(100e-9)
  h:record(1e-3)
  h:record(1e-3)
  return h:export()
end

local function import_fails(pattern, t)
  return expect.invalid(pattern, core.histogram_import, t)
end

describe("histogram", function()
  it("starts empty and reports 0 for everything", function()
    local h = core.histogram()
    assert.equal(0, h:count())
    assert.equal("integer", math.type(h:count()))
    assert.equal(0, h:percentile(50))
    assert.equal(0, h:percentile(0))
    assert.equal(0, h:percentile(100))
    assert.equal(0, h:min())
    assert.equal(0, h:max())
    assert.equal(0, h:mean())
    assert.equal("retry.Histogram (0 values)", tostring(h))
  end)

  for _, dist in ipairs(DISTS) do
    it("gives percentiles within 1% of the exact ones: " .. dist[1], function()
      local xs = samples(20000, dist[2])
      local h = record_all(core.histogram(), xs)
      -- What the histogram holds is whole ns, so compare with those.
      local sorted = {}
      for i, x in ipairs(xs) do sorted[i] = math.floor(x * 1e9 + 0.5) / 1e9 end
      table.sort(sorted)
      assert.equal(#xs, h:count())
      for _, p in ipairs(PCTS) do
        local want, got = exact(sorted, p[2], p[3]), h:percentile(p[1])
        assert.is_true(close_to(want, got, 0.01),
          ("%s p%g: got %.9g, exact %.9g"):format(dist[1], p[1], got, want))
      end
      assert.is_true(close_to(sorted[1], h:percentile(0), 1e-12))
      assert.is_true(close_to(sorted[#sorted], h:percentile(100), 1e-12))
      assert.is_true(close_to(sorted[1], h:min(), 1e-12))
      assert.is_true(close_to(sorted[#sorted], h:max(), 1e-12))
      local sum = 0
      for _, x in ipairs(sorted) do sum = sum + x end
      assert.is_true(close_to(sum / #sorted, h:mean(), 1e-9))
    end)
  end

  it("records negative values as 0 and clamps huge ones", function()
    local h = core.histogram()
    h:record(-5)
    h:record(-math.huge)
    assert.equal(0, h:max())
    h:record(math.huge)
    h:record(1e300)
    assert.equal(4, h:count())
    assert.equal(0, h:min())
    assert.is_true(close_to(2 ^ 64 / 1e9, h:max(), 1e-12))
    assert.equal("retry.Histogram (4 values)", tostring(h))
  end)

  it("reset empties it", function()
    local h = record_all(core.histogram(), { 1, 2, 3 })
    h:reset()
    assert.equal(0, h:count())
    assert.equal(0, h:max())
    assert.same(core.histogram():export(), h:export())
  end)

  describe("export", function()
    it("is a plain table of integers: non-empty buckets as flat pairs",
      function()
        local h = record_all(core.histogram(), { 5e-9, 5e-9, 300e-9, 1 })
        local e = h:export()
        assert.same({
          unit = "ns", sub_buckets = 128, count = 4, min = 5,
          max = 1000000000, sum = 1000000310,
          buckets = { 5, 2, 278, 1, 3054, 1 },
        }, e)
        for _, k in ipairs({ "count", "min", "max", "sum", "sub_buckets" }) do
          assert.equal("integer", math.type(e[k]), k)
        end
        for _, v in ipairs(e.buckets) do
          assert.equal("integer", math.type(v))
        end
      end)

    it("round-trips through histogram_import", function()
      for _, dist in ipairs(DISTS) do
        local h = record_all(core.histogram(), samples(5000, dist[2]))
        local e = h:export()
        local back = core.histogram_import(e)
        assert.same(e, back:export())
        assert.equal(h:percentile(99), back:percentile(99))
        assert.equal(h:mean(), back:mean())
      end
      local empty = core.histogram():export()
      assert.same(empty, core.histogram_import(empty):export())
    end)

    it("round-trips values beyond 2^63 ns, which export as floats", function()
      local h = record_all(core.histogram(), { 1e10, math.huge, 9.3e9 })
      local e = h:export()
      assert.equal("float", math.type(e.min))
      assert.equal("float", math.type(e.max))
      assert.equal("float", math.type(e.sum))
      assert.same(e, core.histogram_import(e):export())
    end)

    it("imports whole floats, as some JSON decoders give", function()
      local e = valid()
      for k, v in pairs(e) do
        if math.type(v) == "integer" then e[k] = v + 0.0 end
      end
      for i, v in ipairs(e.buckets) do e.buckets[i] = v + 0.0 end
      assert.same(valid(), core.histogram_import(e):export())
    end)
  end)

  describe("merge", function()
    it("equals one histogram that recorded both sets", function()
      local xs = samples(20000, DISTS[2][2])
      local ys = samples(20000, DISTS[3][2])
      local a = record_all(core.histogram(), xs)
      local b = record_all(core.histogram(), ys)
      local both = record_all(record_all(core.histogram(), xs), ys)
      assert.equal(a, a:merge(b))
      assert.same(both:export(), a:export())
      assert.equal(40000, a:count())
      assert.equal(20000, b:count())
    end)

    it("merges empty histograms and itself", function()
      local a = record_all(core.histogram(), { 1e-3, 2e-3 })
      local before = a:export()
      a:merge(core.histogram())
      assert.same(before, a:export())
      local c = core.histogram():merge(a)
      assert.same(before, c:export())
      a:merge(a)
      assert.equal(4, a:count())
      assert.same(record_all(core.histogram(), { 1e-3, 2e-3, 1e-3, 2e-3 })
        :export(), a:export())
    end)
  end)

  describe("misuse raises invalid errors", function()
    local h = core.histogram()

    it("record takes numbers only", function()
      expect.invalid("^histogram:record: the value must be a number, got nil$",
        h.record, h, nil)
      expect.invalid("got string", h.record, h, "1")
      expect.invalid("got NaN", h.record, h, 0 / 0)
      assert.equal(0, h:count())
    end)

    it("percentile takes p in [0, 100]", function()
      expect.invalid("^histogram:percentile: p must be a number in %[0, 100%], "
        .. "got 101", h.percentile, h, 101)
      expect.invalid("got %-1", h.percentile, h, -1)
      expect.invalid("got NaN", h.percentile, h, 0 / 0)
      expect.invalid("got nil", h.percentile, h, nil)
      expect.invalid("got string", h.percentile, h, "50")
    end)

    it("methods need a Histogram as self", function()
      expect.invalid("^histogram:count: expected a Histogram as self, got "
        .. "no value", h.count)
      expect.invalid("got table", h.record, {}, 1)
      expect.invalid("got FILE%*", h.record, io.stdout, 1)
      expect.invalid("other must be a Histogram, got FILE%*", h.merge, h,
        io.stdout)
      expect.invalid("^histogram:merge: other must be a Histogram, got table",
        h.merge, h, {})
      expect.invalid("got nil", h.merge, h, nil)
    end)

    it("import takes a table", function()
      import_fails("^histogram_import: expected a table", nil)
      import_fails("got string", "{}")
    end)

    it("import checks unit and sub_buckets", function()
      local e = valid(); e.unit = "ns\0"
      import_fails('unit must be "ns"', e)
      e = valid(); e.unit = "ms"
      import_fails('^histogram_import: unit must be "ns", got "ms"', e)
      e = valid(); e.unit = nil
      import_fails("unit must be \"ns\", got nil", e)
      e = valid(); e.sub_buckets = 64
      import_fails("^histogram_import: sub_buckets must be 128", e)
      e = valid(); e.sub_buckets = nil
      import_fails("sub_buckets must be 128", e)
    end)

    it("import checks count, min, max and sum are integers >= 0", function()
      for _, k in ipairs({ "count", "min", "max", "sum" }) do
        for _, bad in ipairs({ -1, 1.5, "3", false, 0 / 0, 2 ^ 65 }) do
          local e = valid(); e[k] = bad
          import_fails("^histogram_import: " .. k
            .. " must be an integer >= 0, got", e)
        end
        local e = valid(); e[k] = nil
        import_fails(k .. " must be an integer >= 0, got nil", e)
      end
    end)

    it("import checks buckets is a list of pairs", function()
      local e = valid(); e.buckets = nil
      import_fails("^histogram_import: buckets must be a table, got nil", e)
      e = valid(); e.buckets = { 5, 1, 7 }
      import_fails("buckets must hold %(index, count%) pairs, but its length "
        .. "3 is odd", e)
    end)

    it("import checks indexes are integers in range, strictly ascending",
      function()
        for _, bad in ipairs({ -1, 7424, 1.5, "1", true }) do
          local e = valid(); e.buckets[1] = bad
          import_fails("^histogram_import: buckets%[1%] %(an index%) must be "
            .. "an integer in %[0, 7423%], got", e)
        end
        local e = valid()
        e.buckets = { e.buckets[3], e.buckets[4], e.buckets[1], e.buckets[2] }
        import_fails("bucket indexes must be strictly ascending, but "
          .. "buckets%[3%] = 100 follows 1780", e)
        e = valid()
        e.buckets = { 100, 1, 100, 2 }
        e.min, e.max = 100, 100
        import_fails("strictly ascending, but buckets%[3%] = 100 follows 100",
          e)
      end)

    it("import checks bucket counts are positive integers", function()
      for _, bad in ipairs({ 0, -2, 1.5, "1" }) do
        local e = valid(); e.buckets[4] = bad
        import_fails("^histogram_import: buckets%[4%] %(a count%) must be an "
          .. "integer >= 1", e)
      end
    end)

    it("import checks the bucket counts sum to count", function()
      local e = valid(); e.count = 4
      import_fails("^histogram_import: the bucket counts sum to 3, but count "
        .. "is 4", e)
      e = valid(); e.count = 2
      import_fails("^histogram_import: the bucket counts sum to more than "
        .. "count %(2%)", e)
      e = valid(); e.count = 0
      import_fails("sum to more than count %(0%)", e)
    end)

    it("import checks min and max against each other and the buckets",
      function()
        local e = valid(); e.min, e.max = 200, 150
        import_fails("^histogram_import: min %(200%) must not exceed max "
          .. "%(150%)", e)
        e = valid(); e.min = 101
        import_fails("^histogram_import: min %(101%) must lie in the first "
          .. "non%-empty bucket %(100: 100%.%.100%)", e)
        e = valid(); e.max = 999423
        import_fails("^histogram_import: max %(999423%) must lie in the last "
          .. "non%-empty bucket %(1780: 999424%.%.1003519%)", e)
        e = valid(); e.max = 1003520
        import_fails("max %(1003520%) must lie in the last", e)
        -- Anywhere inside the bucket is fine: that is all it records.
        e = valid(); e.max = 1003519
        assert.equal(3, core.histogram_import(e):count())
      end)

    it("import takes an empty histogram only with min, max and sum 0",
      function()
        local e = core.histogram():export()
        assert.same({ unit = "ns", sub_buckets = 128, count = 0, min = 0,
          max = 0, sum = 0, buckets = {} }, e)
        assert.equal(0, core.histogram_import(e):count())
        e.min = 5
        import_fails("^histogram_import: an empty histogram %(count 0%) must "
          .. "have min, max and sum 0", e)
      end)
  end)
end)
