"""Every Redis key and channel name, built in one place under a configurable prefix.

Keys of one session share the hash tag `{session_id}` so that every script that
touches several of them stays on one slot of a Redis Cluster. The indexes
(pending sessions by deadline, runs, outboxes to relay) are split into
`index_shards` shards, each under a hash tag of its own (`{ix<n>}`), so on a
cluster they spread over the masters; a session's entries go to the shard its
id hashes to (`shard`), and a script that touches an index touches one shard.
No script touches a session's keys and an index together.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

CLUSTER_INDEX_SHARDS = 16
"""Index shards on a Redis Cluster (one on a single Redis)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key names for one deployment (one `prefix`)."""

    prefix: str
    index_shards: int = 1

    @classmethod
    def of(cls, prefix: str, *, cluster: bool) -> Keys:
        return cls(prefix, CLUSTER_INDEX_SHARDS if cluster else 1)

    def shard(self, member: str) -> int:
        """The index shard of a session or run id."""
        return zlib.crc32(member.encode()) % self.index_shards

    @property
    def shards(self) -> range:
        return range(self.index_shards)

    def _ix(self, shard: int) -> str:
        return f"{self.prefix}:{{ix{shard}}}"

    def session(self, session_id: str) -> str:
        """Hash holding one approval session: status, request, calls, decisions, results."""
        return f"{self.prefix}:session:{{{session_id}}}"

    def wakeup_channel(self, session_id: str) -> str:
        """Pub/sub channel that tells the holder of a session to re-read it."""
        return f"{self.prefix}:wake:{{{session_id}}}"

    def run_log(self, log_id: str) -> str:
        """Stream of a held request's events from its first approval notice on."""
        return f"{self.prefix}:log:{{{log_id}}}"

    def run_meta(self, log_id: str) -> str:
        """Hash describing a run: its current session, completion id, model, last seq, done."""
        return f"{self.prefix}:run:{{{log_id}}}"

    def lease(self, log_id: str) -> str:
        """Who runs a held request's continuation now: `<owner> <token>`, with a PX expiry."""
        return f"{self.prefix}:lease:{{{log_id}}}"

    def fence(self, log_id: str) -> str:
        """Counter issuing the fencing tokens of a run's leases."""
        return f"{self.prefix}:fence:{{{log_id}}}"

    def runs(self, shard: int) -> str:
        """Sorted set of the runs not known to have ended (one shard of them), scored by
        when (unix ms) the sweeper next checks that a replica still drives them."""
        return f"{self._ix(shard)}:runs"

    def outbox_audit(self, session_id: str) -> str:
        """Stream of a session's audit entries not yet in the audit log (`core.outbox`)."""
        return f"{self.prefix}:outbox:audit:{{{session_id}}}"

    def outbox_hooks(self, session_id: str) -> str:
        """Stream of a session's webhook events not yet delivered, in order (`core.outbox`)."""
        return f"{self.prefix}:outbox:hooks:{{{session_id}}}"

    def outbox_views(self, session_id: str) -> str:
        """Hash of the session as each of its webhook events shows it (by outbox entry id)."""
        return f"{self.prefix}:outbox:views:{{{session_id}}}"

    def outbox_lock(self, session_id: str, part: str) -> str:
        """Which relay works on one `part` ("audit", "hooks") of a session's outbox now."""
        return f"{self.prefix}:outbox:lock:{part}:{{{session_id}}}"

    def outbox_due(self, shard: int) -> str:
        """Sorted set of sessions (one shard of them) whose outbox may hold entries, scored
        by when (unix ms) a relay next looks."""
        return f"{self._ix(shard)}:outbox-due"

    @property
    def sweeper_lock(self) -> str:
        """Which replica sweeps now (`core.round_lock`): its name, with a PX expiry."""
        return f"{self.prefix}:sweeper-lock"

    @property
    def hub_channel(self) -> str:
        """Channel every process's wake-up hub keeps subscribed (keeps its connection open)."""
        return f"{self.prefix}:hub"

    def deadlines(self, shard: int) -> str:
        """Sorted set of pending session ids (one shard of them) scored by their deadline
        (unix seconds)."""
        return f"{self._ix(shard)}:deadlines"

    @property
    def jobs(self) -> str:
        """Stream of tool jobs consumed by the workers' group."""
        return f"{self.prefix}:jobs"

    @property
    def dead_jobs(self) -> str:
        """Stream of jobs given up on (attempts exhausted), kept for operators."""
        return f"{self.prefix}:jobs:dead"

    def audit_of(self, tenant: str) -> str:
        """Stream of one tenant's approval events: requested, decided, executed, expired...
        The tenant is hex-encoded (no two tenants share a stream, whatever their names);
        events of no tenant ("") go to the system stream, `audit:system`."""
        return f"{self.prefix}:audit:{tenant.encode().hex() or 'system'}"

    @property
    def audit_tenants(self) -> str:
        """Set of the tenants that have an audit stream ("" for the system stream)."""
        return f"{self.prefix}:audit-tenants"

    def grant(self, scope: str, tool: str, sha256: str) -> str:
        """A standing approval of `tool` for one requester in one conversation (`scope`, see
        `core.grants.GrantScope.key_part`); `sha256` "*" covers any arguments."""
        return f"{self.prefix}:grant:{scope}:{tool}:{sha256}"

    def handoff(self, call_id: str) -> str:
        """The session of a client call released to its client (by the gateway's call id)."""
        return f"{self.prefix}:handoff:{call_id}"

    def taint(self, scope: str) -> str:
        """Set while untrusted tool output is in one requester's conversation (`scope`)."""
        return f"{self.prefix}:taint:{scope}"

    def tainted_output(self, tenant: str, digest: str) -> str:
        """Set for a message the model wrote with untrusted output in its context (`digest`:
        SHA-256 of its text, or of a call id), so the message taints any history it is in."""
        return f"{self.prefix}:tainted:{tenant.encode().hex()}:{digest}"

    @property
    def conversation_secret(self) -> str:
        """The deployment's key for signing the conversation ids it issues (made at first start)."""
        return f"{self.prefix}:secret:conversations"

    def idempotency(self, scope: str, digest: str) -> str:
        """What became of a request sent with an `Idempotency-Key` (`digest`: the key's
        SHA-256) by one requester (`scope`)."""
        return f"{self.prefix}:idem:{scope}:{{idem-{digest}}}"

    def pending_of(self, tenant: str, shard: int) -> str:
        """Sorted set of one tenant's pending session ids (in one shard) scored by deadline
        (its fair share); in the shard's slot, beside `deadlines`."""
        return f"{self._ix(shard)}:pending:{tenant.encode().hex()}"

    @property
    def jobs_group(self) -> str:
        """Consumer group of the workers on the job stream."""
        return "workers"
