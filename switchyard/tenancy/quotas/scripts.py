"""The two Redis scripts of enforcement: admit (every window of key and tenant, and every budget, checked and
taken together, all or nothing) and settle (a task's reservation replaced by what it really used, once).

Keys (`sy:q:` prefix; a scope is `k:<key id>` or `t:<tenant id>`):
- `<scope>:rpm:<minute>`, `:tpm:<minute>`, `:rph:<hour>`, `:rpd:<day>`: fixed UTC windows, counters that
  expire after their window, so nothing ever resets them;
- `<scope>:conc`: calls admitted and not yet ended;
- `<scope>:s:d:<yyyymmdd>` / `:s:m:<yyyymm>`: USD spent in the window (nano-dollars), seeded from Postgres
  when missing (a first call in the window, or a flushed Redis);
- `<scope>:r:d:...` / `:r:m:...`: USD reserved by calls in flight;
- `rec` (hash, task id -> JSON) and `exp` (sorted set, task id -> expiry in ms): each task's reservation.
  A reservation whose expiry passes (its process died before the task row was committed, or the task outlived
  the reservation's TTL) is released by the next admission (at most a few per call); its record stays,
  marked, so that a late settlement still counts the spend, and goes a week later.

Amounts are integers (nano-dollars, tokens): Lua numbers are doubles, exact far beyond any budget.
"""

from __future__ import annotations

PREFIX = "sy:q:"

_COMMON = """
local P = 'sy:q:'
local function int(x) return string.format('%d', x) end
local function num(k) return tonumber(redis.call('GET', k) or '0') end
local function release(r)
  for _, b in ipairs(r.b) do
    if redis.call('EXISTS', b[2]) == 1 then redis.call('DECRBY', b[2], int(r.n)) end
  end
  for _, q in ipairs(r.q) do
    if num(q) > 0 then redis.call('DECR', q) end
  end
end
"""

ADMIT = (
    _COMMON
    + """
local a = cjson.decode(ARGV[1])
local now = tonumber(a.now)
-- Reap a few lapsed reservations: their budget and concurrency go back.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, 8)) do
  local raw = redis.call('HGET', P .. 'rec', id)
  if raw then
    local r = cjson.decode(raw)
    if r.x == 0 then
      release(r)
      r.x = 1
      redis.call('HSET', P .. 'rec', id, cjson.encode(r))
      redis.call('ZADD', P .. 'exp', now + 7 * 86400000, id)
    else
      redis.call('HDEL', P .. 'rec', id)
      redis.call('ZREM', P .. 'exp', id)
    end
  else
    redis.call('ZREM', P .. 'exp', id)
  end
end
-- A budget window whose spend is unknown here is seeded by the caller from Postgres, then asked again.
local missing = {}
for _, b in ipairs(a.b) do
  if redis.call('EXISTS', b[1]) == 0 then table.insert(missing, b[1]) end
end
if #missing > 0 then return cjson.encode({seed = missing}) end
local n = tonumber(a.n)
local v, qv, bv, fc, fq, fb = {}, {}, {}, {}, {}, {}
for i, c in ipairs(a.c) do
  v[i] = num(c[1])
  if v[i] + tonumber(c[2]) > tonumber(c[3]) then table.insert(fc, i - 1) end
end
for i, q in ipairs(a.q) do
  qv[i] = num(q[1])
  if qv[i] + 1 > tonumber(q[2]) then table.insert(fq, i - 1) end
end
for i, b in ipairs(a.b) do
  local spent, held = num(b[1]), num(b[2])
  bv[i] = {spent, held}
  if spent + held + n > tonumber(b[3]) then table.insert(fb, i - 1) end
end
if #fc > 0 or #fq > 0 or #fb > 0 then
  return cjson.encode({ok = 0, v = v, q = qv, b = bv, fc = fc, fq = fq, fb = fb})
end
local rec = {c = {}, q = {}, b = {}, n = n, x = 0}
for i, c in ipairs(a.c) do
  v[i] = redis.call('INCRBY', c[1], c[2])
  if v[i] == tonumber(c[2]) then redis.call('EXPIRE', c[1], c[4]) end
  if c[5] == 1 then table.insert(rec.c, {c[1], tonumber(c[2])}) end
end
for i, q in ipairs(a.q) do
  qv[i] = redis.call('INCR', q[1])
  table.insert(rec.q, q[1])
end
for i, b in ipairs(a.b) do
  redis.call('INCRBY', b[2], int(n))
  redis.call('EXPIRE', b[2], b[4])
  bv[i][2] = bv[i][2] + n
  table.insert(rec.b, {b[1], b[2]})
end
if a.id ~= '' and (#rec.c > 0 or #rec.q > 0 or #rec.b > 0) then
  redis.call('HSET', P .. 'rec', a.id, cjson.encode(rec))
  redis.call('ZADD', P .. 'exp', a.exp, a.id)
end
return cjson.encode({ok = 1, v = v, q = qv, b = bv})
"""
)

# ARGV: task id, real cost (nano-dollars), real tokens (-1: unknown, leave the estimate).
# Deleting the record is what makes a settlement happen once: a second finish path finds nothing.
SETTLE = (
    _COMMON
    + """
local raw = redis.call('HGET', P .. 'rec', ARGV[1])
if not raw then return 0 end
local r = cjson.decode(raw)
if r.x == 0 then release(r) end
local cost = tonumber(ARGV[2])
for _, b in ipairs(r.b) do
  -- A spend counter that is gone (a flushed Redis) is seeded from Postgres, which has this task's cost.
  if cost > 0 and redis.call('EXISTS', b[1]) == 1 then redis.call('INCRBY', b[1], int(cost)) end
end
local tokens = tonumber(ARGV[3])
if tokens >= 0 then
  for _, c in ipairs(r.c) do
    if redis.call('EXISTS', c[1]) == 1 then
      local left = redis.call('INCRBY', c[1], int(tokens - c[2]))
      if left < 0 then redis.call('SET', c[1], 0, 'KEEPTTL') end
    end
  end
end
redis.call('HDEL', P .. 'rec', ARGV[1])
redis.call('ZREM', P .. 'exp', ARGV[1])
return 1
"""
)
