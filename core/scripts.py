"""The Lua scripts that move sessions and calls between statuses, one per transition.

Each script touches only the keys of one session (one hash tag), reads the
clock with `TIME` so every replica agrees on deadlines, checks the current
status before it writes, and publishes the wake-up itself. The contract of
each (KEYS / ARGV / return) is commented above it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

from core.connect import RedisClient
from core.records import CallStatus, SessionStatus

_PUBLISH = "redis.call('PUBLISH', "
"""The one way a script publishes; on a Redis Cluster it becomes a sharded publish."""


def register(redis: RedisClient, source: str) -> AsyncScript:
    """Register a script. On a Redis Cluster its wake-ups go over sharded pub/sub: each
    script publishes only on a channel with the hash tag of its `KEYS[1]`, so `SPUBLISH`
    reaches the master that holds the session, where its holders subscribe."""
    if isinstance(redis, RedisCluster):
        return _ClusterScript(redis, source.replace(_PUBLISH, "redis.call('SPUBLISH', "))
    return redis.register_script(source)


class _ClusterScript(AsyncScript):
    """A script on a Redis Cluster: a master just promoted has no script loaded (`SCRIPT
    LOAD` is not replicated), and redis-py's reload may go to a node list from before the
    failover; then the call sends the script itself (`EVAL`, which also loads it there)."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: RedisClient | None = None,
    ) -> Any:
        try:
            return await super().__call__(keys, args, client)
        except NoScriptError:
            keys, args = list(keys or ()), list(args or ())
            target = client or self.registered_client
            return await target.eval(self.script, len(keys), *keys, *args)  # type: ignore[arg-type]


def _lua_table(name: str, statuses: type[SessionStatus] | type[CallStatus]) -> str:
    pairs = ", ".join(f"{status.name} = '{status.value}'" for status in statuses)
    return f"local {name} = {{{pairs}}}\n"


STATUSES = _lua_table("SESSION", SessionStatus) + _lua_table("CALL", CallStatus)
"""The status enums as Lua tables (`SESSION.PENDING`, `CALL.QUEUED`, ...), prepended to every
session script: no status is written by hand in Lua (tests/test_state_machine.py checks)."""

# Shared helpers, prepended to every script that needs them.
_HELPERS = (
    STATUSES
    + """
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
    if redis.call('HGET', key, 'status:' .. id) == CALL.PENDING then
      redis.call('HSET', key, 'status:' .. id, CALL.EXPIRED, 'decision:' .. id, decision)
    end
  end
  redis.call('HSET', key, 'status', SESSION.EXPIRED, 'decided_as', SESSION.EXPIRED,
             'decided_at', tostring(now))
  redis.call('PUBLISH', channel, SESSION.EXPIRED)
end
-- What makes two decisions of one call the same (a repeat), whoever made them and when.
local function fingerprint(kind, reason, sha, content)
  return kind .. '\\n' .. reason .. '\\n' .. sha .. '\\n' .. content
end
local function is_overdue(key, now)
  return now >= tonumber(redis.call('HGET', key, 'expires_at'))
end
"""
)

# Decide some calls of a session, each its own way (approve, reject, edit, respond).
# Every item is checked before any is applied: one bad item changes nothing.
# The audit entry of each call decided and the `approval.decided` webhook event go to the
# session's outbox in the same script (`core.outbox` relays them).
# KEYS[1] session hash
# KEYS[2] the session's outbox of audit entries
# KEYS[3] the session's outbox of webhook events
# ARGV[1] JSON list of {id, kind, reason, expected (hash the approver saw, or ''),
#   sha (hash of what may run, or ''), status (the call's new status), decision (JSON),
#   result (ToolResult JSON for 'respond', or ''), content (the responded result or ''),
#   audit (the call's `decided` audit entry, JSON)}
# ARGV[2] wake-up channel
# ARGV[3] the deciding actor
# ARGV[4] '1' to queue the `approval.decided` webhook event, '0' when nobody subscribed
# ARGV[5] retention of the outbox, seconds
# Returns {'ok', 'decided' | 'partial', HGETALL, the webhook event's entry id or '',
#   the call ids decided now, their audit entries' ids in the outbox},
# {'repeat', HGETALL},
# {'conflict', id, status}, {'hash_mismatch', id}, {'unknown_call', id}, {'expired'} or
# {'not_found'}.
DECIDE_CALLS = (
    _HELPERS
    + """
local key = KEYS[1]
-- One read of the whole session; everything below works on this table, and the writes
-- go out as one HSET, so a decision costs a fixed handful of commands however many calls.
local raw = redis.call('HGETALL', key)
if #raw == 0 then return {'not_found'} end
local f = {}
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
local now = now_s()
if f.status == SESSION.PENDING and now >= tonumber(f.expires_at) then
  expire_pending(key, now, ARGV[2])
  return {SESSION.EXPIRED, 'now'}
end
if f.decided_as == SESSION.EXPIRED then return {SESSION.EXPIRED} end
local ids, hashes = {}, {}
for _, c in ipairs(cjson.decode(f.calls)) do
  ids[#ids + 1] = c.id
  hashes[c.id] = c.arguments_sha256
end
local items = cjson.decode(ARGV[1])
local fresh = {}
for _, item in ipairs(items) do
  if not hashes[item.id] then return {'unknown_call', item.id} end
  if item.expected ~= '' and item.expected ~= hashes[item.id] then
    return {'hash_mismatch', item.id}
  end
  local s = f['status:' .. item.id]
  if s == CALL.PENDING then
    fresh[#fresh + 1] = item
  elseif f['fp:' .. item.id] ~= fingerprint(item.kind, item.reason, item.sha, item.content) then
    return {'conflict', item.id, s}
  end
end
if #fresh == 0 then return {'repeat', raw} end
local writes = {}
local function set(field, value)
  f[field] = value
  writes[#writes + 1] = field
  writes[#writes + 1] = value
end
for _, item in ipairs(fresh) do
  set('status:' .. item.id, item.status)
  set('decision:' .. item.id, item.decision)
  set('fp:' .. item.id, fingerprint(item.kind, item.reason, item.sha, item.content))
  if item.result ~= '' then set('result:' .. item.id, item.result) end
end
-- Once no call is pending, the session is decided: approved when any call may run.
local settled, any_approved = true, false
for _, id in ipairs(ids) do
  local s = f['status:' .. id]
  if s == CALL.PENDING then settled = false end
  if s == CALL.APPROVED then any_approved = true end
end
if settled then
  local decided_as = any_approved and SESSION.APPROVED or SESSION.REJECTED
  set('status', decided_as)
  set('decided_as', decided_as)
  set('decided_at', tostring(now))
end
redis.call('HSET', key, unpack(writes))
local decided_ids, audit_ids = {}, {}
for _, item in ipairs(fresh) do
  audit_ids[#audit_ids + 1] = redis.call('XADD', KEYS[2], '*', 'e', item.audit)
  decided_ids[#decided_ids + 1] = item.id
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
local hook = ''
if ARGV[4] == '1' then
  local event = cjson.encode({decided_by = ARGV[3], tool_call_ids = decided_ids,
                              complete = settled})
  hook = redis.call('XADD', KEYS[3], '*', 'type', 'approval.decided', 'data', event)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if settled then redis.call('PUBLISH', ARGV[2], 'decided') end
local after = {}
for field, value in pairs(f) do
  after[#after + 1] = field
  after[#after + 1] = value
end
return {'ok', settled and 'decided' or 'partial', after, hook, decided_ids, audit_ids}
"""
)

# Expire a session if it is pending and its deadline has passed.
# KEYS[1] session hash
# ARGV[1] wake-up channel
# Returns the status after the check ('expired_now' when this call expired it), or false
# when the session does not exist.
EXPIRE_IF_OVERDUE = (
    _HELPERS
    + """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return false end
local now = now_s()
if status == SESSION.PENDING and is_overdue(key, now) then
  expire_pending(key, now, ARGV[1])
  return 'expired_now'
end
return status
"""
)

# Claim a decided session's continuation: approved calls become queued (approved client
# calls become released: the client runs them). A runner holding a
# newer lease (a higher fencing token) may claim a session that is already running: it takes
# over from a runner that died, and gets every still-queued call back to queue again (a job
# queued twice is harmless: the worker skips a call that is not `queued`).
# KEYS[1] session hash
# ARGV[1] space-separated statuses allowed to start from (`sources_of(RUNNING)`)
# ARGV[2] runner id
# ARGV[3] fencing token (0 when the continuation runs without a lease)
# Returns {'ok', {call ids to queue}, hash, status before} or {'refused', status, hash}
# (the session as it is now, saving the caller a read; empty while it is pending), or
# {'not_found'}.
BEGIN_RUN = (
    _HELPERS
    + """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found'} end
local token = tonumber(ARGV[3])
local held_token = tonumber(redis.call('HGET', key, 'runner_token') or '0')
local takeover = status == SESSION.RUNNING and token > 0 and token > held_token
-- The same runner asking again (its client retried after a lost reply) gets the same answer.
local again = status == SESSION.RUNNING and redis.call('HGET', key, 'runner') == ARGV[2]
  and token == held_token
takeover = takeover or again
if not takeover and not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then
  -- Still pending is the common refusal (a holder checking after a wake-up): keep it small.
  if status == SESSION.PENDING then return {'refused', status, {}} end
  return {'refused', status, redis.call('HGETALL', key)}
end
local queued = {}
for _, c in ipairs(cjson.decode(redis.call('HGET', key, 'calls'))) do
  local s = redis.call('HGET', key, 'status:' .. c.id)
  if s == CALL.APPROVED and c.side == 'client' then
    -- The client runs it: released to the client with the answer, never queued.
    redis.call('HSET', key, 'status:' .. c.id, CALL.RELEASED)
  elseif s == CALL.APPROVED or (takeover and s == CALL.QUEUED) then
    redis.call('HSET', key, 'status:' .. c.id, CALL.QUEUED)
    queued[#queued + 1] = c.id
  end
end
redis.call('HSET', key, 'status', SESSION.RUNNING, 'runner', ARGV[2], 'runner_token', token)
return {'ok', queued, redis.call('HGETALL', key), status}
"""
)

# Move a session from one of the allowed statuses to a target, and set its TTL.
# KEYS[1] session hash
# ARGV[1] target status
# ARGV[2] space-separated statuses allowed to move from (`sources_of(target)`)
# ARGV[3] TTL seconds
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
# ARGV[1] tool call id
# ARGV[2] worker name
# ARGV[3] 'fresh' | 'reclaimed'
# ARGV[4] '1' when the tool is idempotent
# ARGV[5] max attempts
# ARGV[6] wake-up channel
# ARGV[7] the job's stream entry id
# Returns {'run', calls JSON, decision JSON, tenant}, {'unknown'} (settled as unknown),
# {'exhausted'} (settled as failed) or {'skip', status} (`core.store.StartOutcome`).
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
if status == CALL.QUEUED then
  redis.call('HSET', key, 'status:' .. id, CALL.RUNNING, 'attempts:' .. id, 1)
elseif status == CALL.RUNNING and ARGV[3] == 'fresh'
    and redis.call('HGET', key, 'job:' .. id) == ARGV[7]
    and redis.call('HGET', key, 'worker:' .. id) == ARGV[2] then
  -- This very start, retried after its reply was lost: the worker has not run it yet.
  return {'run', redis.call('HGET', key, 'calls'), redis.call('HGET', key, 'decision:' .. id) or '',
          redis.call('HGET', key, 'tenant') or 'default'}
elseif status == CALL.RUNNING and ARGV[3] == 'reclaimed' then
  if ARGV[4] ~= '1' then
    settle(CALL.UNKNOWN, 'the worker running this call stopped; it may or may not have taken '
           .. 'effect, and it was not run again because the tool is not idempotent')
    return {CALL.UNKNOWN}
  end
  local attempts = redis.call('HINCRBY', key, 'attempts:' .. id, 1)
  if attempts > tonumber(ARGV[5]) then
    settle(CALL.FAILED, 'gave up after ' .. (attempts - 1)
           .. ' attempts: the workers running it stopped')
    return {'exhausted'}
  end
else
  return {'skip', status or 'missing'}
end
redis.call('HSET', key, 'worker:' .. id, ARGV[2], 'job:' .. id, ARGV[7],
           'started_at:' .. id, tostring(now_s()))
return {'run', redis.call('HGET', key, 'calls'), redis.call('HGET', key, 'decision:' .. id) or '',
        redis.call('HGET', key, 'tenant') or 'default'}
"""
)

# A worker stores the outcome of a call it started, then wakes the holder.
# KEYS[1] session hash
# ARGV[1] tool call id
# ARGV[2] the call's new status (`ToolResult.status`)
# ARGV[3] result JSON
# ARGV[4] wake-up channel
# Returns 1 when stored, 0 when the call was not running.
FINISH_CALL = (
    STATUSES
    + """
local key = KEYS[1]
if redis.call('HGET', key, 'status:' .. ARGV[1]) ~= CALL.RUNNING then return 0 end
redis.call('HSET', key, 'status:' .. ARGV[1], ARGV[2], 'result:' .. ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'result')
return 1
"""
)

# Take the lease on a held request's continuation (`RENEW_LEASES` renews it).
# KEYS[1] lease
# KEYS[2] fence counter
# ARGV[1] owner
# ARGV[2] lease milliseconds
# ARGV[3] how long the fence counter is kept (seconds; renewed at each new lease)
# Returns the caller's fencing token, or 0 when another owner holds a live lease.
ACQUIRE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local owner, held = string.match(current, '^(.*) (%d+)$')
  -- An acquire retried after a lost reply finds its own lease: same answer again.
  if owner ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(held)
end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""

# Renew many leases in one call, each only while it is still the caller's.
# KEYS the leases
# ARGV[1] lease milliseconds
# ARGV[i + 1] '<owner> <token>' for KEYS[i]
# Returns a list with 1 for each lease renewed and 0 for each that lapsed or changed hands.
RENEW_LEASES = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""

# Give a lease back, if it is still the caller's.
# KEYS[1] lease
# ARGV[1] owner
# ARGV[2] token
# Returns 1 when released, 0 when it was not the caller's.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] .. ' ' .. ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Append a batch of events to a run's log, fenced by its lease, then wake its tailers.
# KEYS[1] lease
# KEYS[2] log stream
# KEYS[3] run meta hash
# ARGV[1] '<owner> <token>'
# ARGV[2] retention seconds
# ARGV[3] log MAXLEN
# ARGV[4] wake-up channel
# ARGV[5] number of meta field/value pairs that follow
# ARGV[6..] the meta pairs, then seq/event pairs
# Returns 1 when appended, 0 when the caller no longer holds the lease (fenced out).
APPEND_EVENTS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local meta_pairs = tonumber(ARGV[5])
local first_event = 6 + 2 * meta_pairs
for i = 6, first_event - 1, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
-- Events already logged (a retried append whose first reply was lost) are skipped.
local last = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
for i = first_event, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[i] .. '-1', 'e', ARGV[i + 1])
    last = seq
  end
end
redis.call('HSET', KEYS[3], 'seq', last)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], 'log')
return 1
"""

# Claim an idempotency key for a request: the first request with the key runs; a retry
# finds the record of the first. A record still `running` past `until` was abandoned (its
# replica died with it) and is claimed afresh. Without an explicit key, two requests with
# the same body from the same requester at once cannot be told apart: the record is then
# marked ambiguous, and retries of either run afresh instead of taking the other's answer.
# KEYS[1] the key's record (hash)
# ARGV[1] the request's fingerprint (SHA-256 of its body)
# ARGV[2] until: unix seconds after which a running request counts as abandoned
# ARGV[3] retention seconds of the record
# ARGV[4] '1' when the request says it is a first attempt (not a retry)
# ARGV[5] the claimant's token (only it may record what became of the request)
# ARGV[6] the conversation the request belongs to (its retries answer with it)
# Returns {'new'} when this request is the first, {'ambiguous'} when a retry cannot be
# matched, else {'seen', HGETALL}.
CLAIM_IDEMPOTENCY_KEY = (
    _HELPERS
    + """
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
if state then
  local abandoned = state == 'running' and tonumber(redis.call('HGET', key, 'until')) < now_s()
  local first = ARGV[4] == '1'
  if first and state == 'running' and not abandoned then
    redis.call('HSET', key, 'ambiguous', '1')
    return {'ambiguous'}
  end
  if not first and redis.call('HGET', key, 'ambiguous') == '1' then return {'ambiguous'} end
  if not first and not abandoned then return {'seen', redis.call('HGETALL', key)} end
  redis.call('DEL', key)
end
redis.call('HSET', key, 'fingerprint', ARGV[1], 'state', 'running', 'until', ARGV[2],
           'owner', ARGV[5], 'conversation', ARGV[6])
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return {'new'}
"""
)

# Record what became of a request, if the record is still the caller's, and wake waiters.
# KEYS[1] the key's record
# ARGV[1] the claimant's token
# ARGV[2] the wake-up channel
# ARGV[3..] field/value pairs
# Returns 1 when recorded, 0 when the record is another request's (or gone).
UPDATE_IDEMPOTENCY_KEY = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PUBLISH', ARGV[2], 'idem')
return 1
"""

# Reserve a place for a new pending session within the deployment's and the tenant's
# bounds, in one step within its index shard (a count and a later insert would let a burst
# past both); the other shards' counts, read just before, are added (with one shard, as
# on a single Redis, the bounds are exact).
# KEYS[1] the shard's deadline index
# KEYS[2] the tenant's pending index in the shard
# ARGV[1] session id
# ARGV[2] its deadline (unix seconds)
# ARGV[3] the deployment's bound
# ARGV[4] the tenant's bound
# ARGV[5] entries of the tenant's index older than this no longer count (a crash left them)
# ARGV[6] pending sessions in the other shards
# ARGV[7] the tenant's pending sessions in the other shards
# Returns 'ok' when reserved, else 'total' or 'tenant': the bound that refused it.
RESERVE_PENDING = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local total = redis.call('ZCARD', KEYS[1]) + tonumber(ARGV[6])
if total >= tonumber(ARGV[3]) then return 'total' end
local tenant = redis.call('ZCARD', KEYS[2]) + tonumber(ARGV[7])
if tenant >= tonumber(ARGV[4]) then return 'tenant' end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 'ok'
"""

# Drop a member from a sorted set only if its score is still the one the caller set (no
# one re-indexed it since).
# KEYS[1] the sorted set
# ARGV[1] member
# ARGV[2] the score the caller set
# Returns 1 when dropped, 0 when the score changed (or the member is gone).
FORGET_IF_UNCHANGED = """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) ~= tonumber(ARGV[2]) then return 0 end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
