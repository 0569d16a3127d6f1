"""The Lua scripts that move sessions and calls between statuses, one per transition.

Each script touches only the keys of one session (one hash tag), reads the
clock with `TIME` so every replica agrees on deadlines, checks the current
status before it writes, and publishes the wake-up itself. The contract of
each (KEYS / ARGV / return) is commented above it.
"""

from __future__ import annotations

# Shared helpers, prepended to every script that needs them.
_HELPERS = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function call_ids(key)
  local ids = {}
  for _, c in ipairs(cjson.decode(redis.call('HGET', key, 'calls'))) do ids[#ids + 1] = c.id end
  return ids
end
local function expire_pending(key, now, channel)
  local decision = cjson.encode({decision = 'reject', reason = 'the approval deadline passed',
                                 actor = 'deadline', decided_at = now})
  for _, id in ipairs(call_ids(key)) do
    if redis.call('HGET', key, 'status:' .. id) == 'pending' then
      redis.call('HSET', key, 'status:' .. id, 'expired', 'decision:' .. id, decision)
    end
  end
  redis.call('HSET', key, 'status', 'expired', 'decided_as', 'expired', 'decided_at', tostring(now))
  redis.call('PUBLISH', channel, 'expired')
end
local function is_overdue(key, now)
  return now >= tonumber(redis.call('HGET', key, 'expires_at'))
end
"""

# Decide every pending call of a session the same way.
# KEYS[1] session hash
# ARGV[1] 'approve' | 'reject'; ARGV[2] reason; ARGV[3] actor; ARGV[4] wake-up channel
# Returns {'ok', HGETALL} when applied, {'repeat', HGETALL} when the same decision
# (same kind, same reason) was already applied, {'conflict', status}, {'expired'} or
# {'not_found'}.
DECIDE_ALL = (
    _HELPERS
    + """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found'} end
local now = now_s()
if status == 'pending' and is_overdue(key, now) then
  expire_pending(key, now, ARGV[4])
  return {'expired'}
end
if redis.call('HGET', key, 'decided_as') == 'expired' then return {'expired'} end
local ids = call_ids(key)
if status == 'pending' then
  local call_status = (ARGV[1] == 'approve') and 'approved' or 'rejected'
  local decision = cjson.encode({decision = ARGV[1], reason = ARGV[2], actor = ARGV[3],
                                 decided_at = now})
  local any_approved = false
  for _, id in ipairs(ids) do
    local s = redis.call('HGET', key, 'status:' .. id)
    if s == 'pending' then
      redis.call('HSET', key, 'status:' .. id, call_status, 'decision:' .. id, decision)
      s = call_status
    end
    if s == 'approved' then any_approved = true end
  end
  local decided_as = any_approved and 'approved' or 'rejected'
  redis.call('HSET', key, 'status', decided_as, 'decided_as', decided_as,
             'decided_at', tostring(now))
  redis.call('PUBLISH', ARGV[4], 'decided')
  return {'ok', redis.call('HGETALL', key)}
end
local by_person = 0
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', key, 'decision:' .. id)
  if raw then
    local d = cjson.decode(raw)
    if d.actor ~= 'policy' then
      if d.decision ~= ARGV[1] or d.reason ~= ARGV[2] then return {'conflict', status} end
      by_person = by_person + 1
    end
  end
end
if by_person == 0 then return {'conflict', status} end
return {'repeat', redis.call('HGETALL', key)}
"""
)

# Expire a session if it is pending and its deadline has passed.
# KEYS[1] session hash
# ARGV[1] wake-up channel
# Returns the status after the check, or false when the session does not exist.
EXPIRE_IF_OVERDUE = (
    _HELPERS
    + """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return false end
local now = now_s()
if status == 'pending' and is_overdue(key, now) then
  expire_pending(key, now, ARGV[1])
  return 'expired'
end
return status
"""
)

# Claim a decided session's continuation: approved calls become queued.
# KEYS[1] session hash
# ARGV[1] space-separated statuses allowed to start from; ARGV[2] runner id
# Returns {'ok', {queued call ids}}, {'refused', status} or {'not_found'}.
BEGIN_RUN = (
    _HELPERS
    + """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found'} end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {'refused', status}
end
local queued = {}
for _, id in ipairs(call_ids(key)) do
  if redis.call('HGET', key, 'status:' .. id) == 'approved' then
    redis.call('HSET', key, 'status:' .. id, 'queued')
    queued[#queued + 1] = id
  end
end
redis.call('HSET', key, 'status', 'running', 'runner', ARGV[2])
return {'ok', queued}
"""
)

# Move a session from one of the allowed statuses to a target, and set its TTL.
# KEYS[1] session hash
# ARGV[1] target; ARGV[2] space-separated allowed statuses; ARGV[3] TTL seconds;
# ARGV[4] wake-up channel
# Returns {'ok'}, {'refused', status} or {'not_found'}.
TRANSITION = """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found'} end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {'refused', status}
end
redis.call('HSET', key, 'status', ARGV[1])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], ARGV[1])
return {'ok'}
"""

# A worker takes a call to run. A fresh job runs only a queued call. A reclaimed job (its
# worker died) whose call was already running is run again only if the tool is idempotent
# and attempts remain; otherwise its outcome is settled here, once.
# KEYS[1] session hash
# ARGV[1] tool call id; ARGV[2] worker name; ARGV[3] 'fresh' | 'reclaimed';
# ARGV[4] '1' when the tool is idempotent; ARGV[5] max attempts; ARGV[6] wake-up channel
# Returns {'run', calls JSON}, {'unknown'}, {'exhausted'} or {'skip', status}.
START_CALL = (
    _HELPERS
    + """
local key, id = KEYS[1], ARGV[1]
local status = redis.call('HGET', key, 'status:' .. id)
local function settle(call_status, content)
  local result = cjson.encode({status = call_status, content = content, worker = ARGV[2],
                               duration_ms = 0})
  redis.call('HSET', key, 'status:' .. id, call_status, 'result:' .. id, result)
  redis.call('PUBLISH', ARGV[6], 'result')
end
if status == 'queued' then
  redis.call('HSET', key, 'status:' .. id, 'running', 'attempts:' .. id, 1)
elseif status == 'running' and ARGV[3] == 'reclaimed' then
  if ARGV[4] ~= '1' then
    settle('unknown', 'the worker running this call stopped; it may or may not have taken '
           .. 'effect, and it was not run again because the tool is not idempotent')
    return {'unknown'}
  end
  local attempts = redis.call('HINCRBY', key, 'attempts:' .. id, 1)
  if attempts > tonumber(ARGV[5]) then
    settle('failed', 'gave up after ' .. (attempts - 1)
           .. ' attempts: the workers running it stopped')
    return {'exhausted'}
  end
else
  return {'skip', status or 'missing'}
end
redis.call('HSET', key, 'worker:' .. id, ARGV[2], 'started_at:' .. id, tostring(now_s()))
return {'run', redis.call('HGET', key, 'calls')}
"""
)

# A worker stores the outcome of a call it started, then wakes the holder.
# KEYS[1] session hash
# ARGV[1] tool call id; ARGV[2] 'succeeded' | 'failed'; ARGV[3] result JSON;
# ARGV[4] wake-up channel
# Returns 1 when stored, 0 when the call was not running.
FINISH_CALL = """
local key = KEYS[1]
if redis.call('HGET', key, 'status:' .. ARGV[1]) ~= 'running' then return 0 end
redis.call('HSET', key, 'status:' .. ARGV[1], ARGV[2], 'result:' .. ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'result')
return 1
"""
