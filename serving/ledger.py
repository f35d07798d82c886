"""The contact ledger: cap counters, idempotency keys, suppressions and pending triggers, changed atomically.

Two backends with one behaviour: SQLite in WAL mode (default, one file) and Redis (shared by replicas).
A commit re-checks every cap against the stored counters inside one transaction (SQLite `BEGIN
IMMEDIATE`, a Redis Lua script), so concurrent decisions can never push a counter past its cap.
Any backend failure raises LedgerUnavailable: the caller must then not contact anyone.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nextbest.serving.policy import CAPACITY, Constraint, Key

__all__ = ["LedgerUnavailable", "Reservation", "Commit", "Snapshot", "Ledger", "SQLiteLedger", "RedisLedger", "open_ledger"]


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be read or written; no contact may be made."""


@dataclass(frozen=True)
class Reservation:
    """One decision to store: its charges, the caps they must respect, and the record to replay."""

    decision_id: str
    user_id: str
    charges: list[Key]
    constraints: list[Constraint]
    record: dict  # the response, replayed verbatim for the same idempotency key
    idempotency_key: str | None = None
    pending: tuple[str, float] | None = None  # (cancelling event type, until epoch s) for a waiting trigger


@dataclass(frozen=True)
class Commit:
    """Outcome of a reservation: stored, refused by a cap (a concurrent decision got there first), or a replay."""

    status: str  # "ok" | "refused" | "replay"
    rule: str | None = None
    record: dict | None = None


@dataclass(frozen=True)
class Snapshot:
    """Counters and suppressions read for a set of users."""

    user_counts: dict[str, dict[str, int]]
    capacity: dict[str, int]
    suppressed: dict[str, dict[str, str]]  # user -> channel or "*" -> reason


class Ledger:
    """The operations the service needs; both backends implement them with the same semantics."""

    def read(self, user_ids: Sequence[str]) -> Snapshot: ...
    def replay(self, idempotency_key: str) -> dict | None: ...
    def commit(self, reservations: Sequence[Reservation]) -> list[Commit]: ...
    def decision(self, decision_id: str) -> dict | None: ...
    def release(self, decision_id: str) -> bool: ...
    def suppress(self, rows: Sequence[tuple[str, str, str, str]]) -> int: ...
    def cancel_pending(self, user_id: str, event_type: str, at_s: float) -> list[str]: ...
    def first_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> bool: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (scope TEXT NOT NULL, field TEXT NOT NULL, n INTEGER NOT NULL,
                                     PRIMARY KEY (scope, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, idempotency_key TEXT UNIQUE,
                                      record TEXT NOT NULL, charges TEXT NOT NULL, released INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS suppressions (user_id TEXT NOT NULL, channel TEXT NOT NULL, reason TEXT NOT NULL,
                                         since TEXT NOT NULL, PRIMARY KEY (user_id, channel)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (user_id TEXT NOT NULL, unless TEXT NOT NULL, until_s REAL NOT NULL,
                                    decision_id TEXT NOT NULL, PRIMARY KEY (user_id, decision_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (decision_id TEXT NOT NULL, outcome TEXT NOT NULL, offer_id TEXT NOT NULL,
                                     channel TEXT NOT NULL, PRIMARY KEY (decision_id, outcome, offer_id, channel)) WITHOUT ROWID;
"""


class SQLiteLedger(Ledger):
    """Ledger in one SQLite file (WAL): one connection per thread, writes serialised by BEGIN IMMEDIATE."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection, so close() can close them all
        self._opened_lock = threading.Lock()
        self._conn()  # create the schema now so a bad path fails at start, loudly

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, safe against corruption
                conn.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as err:
                raise LedgerUnavailable(f"contact ledger {self.path} cannot be opened: {err}") from err
            self._local.conn = conn
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection; the last one to close checkpoints the WAL into the database file."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    def _run(self, fn):
        try:
            return fn(self._conn())
        except sqlite3.Error as err:
            self._local.conn = None
            raise LedgerUnavailable(f"contact ledger {self.path}: {err}") from err

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT count(*) FROM counters WHERE scope = ''").fetchone())

    def read(self, user_ids: Sequence[str]) -> Snapshot:
        def go(c: sqlite3.Connection) -> Snapshot:
            ids = list(dict.fromkeys(user_ids))
            marks = ",".join("?" * len(ids))
            counts: dict[str, dict[str, int]] = {u: {} for u in ids}
            for scope, field, n in c.execute(f"SELECT scope, field, n FROM counters WHERE scope IN ({marks})", ids):
                counts[scope][field] = n
            capacity = dict(c.execute("SELECT field, n FROM counters WHERE scope = ?", (CAPACITY,)).fetchall())
            suppressed: dict[str, dict[str, str]] = {u: {} for u in ids}
            for user, channel, reason in c.execute(f"SELECT user_id, channel, reason FROM suppressions WHERE user_id IN ({marks})", ids):
                suppressed[user][channel] = reason
            return Snapshot(counts, capacity, suppressed)
        return self._run(go)

    def replay(self, idempotency_key: str) -> dict | None:
        row = self._run(lambda c: c.execute("SELECT record FROM decisions WHERE idempotency_key = ?", (idempotency_key,)).fetchone())
        return json.loads(row[0]) if row else None

    def decision(self, decision_id: str) -> dict | None:
        row = self._run(lambda c: c.execute("SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone())
        return json.loads(row[0]) if row else None

    def commit(self, reservations: Sequence[Reservation]) -> list[Commit]:
        def go(c: sqlite3.Connection) -> list[Commit]:
            out = []
            c.execute("BEGIN IMMEDIATE")
            try:
                for r in reservations:
                    out.append(self._commit_one(c, r))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return out
        return self._run(go)

    @staticmethod
    def _commit_one(c: sqlite3.Connection, r: Reservation) -> Commit:
        if r.idempotency_key is not None:
            row = c.execute("SELECT record FROM decisions WHERE idempotency_key = ?", (r.idempotency_key,)).fetchone()
            if row:
                return Commit("replay", record=json.loads(row[0]))
        new: dict[Key, int] = {}
        for key in r.charges:
            new[key] = new.get(key, 0) + 1
        # Every counter the caps read, in one query per scope (not one per key): the write lock is held briefly.
        stored: dict[Key, int] = {}
        by_scope: dict[str, set[str]] = {}
        for con in r.constraints:
            for scope, field in con.keys:
                by_scope.setdefault(scope, set()).add(field)
        for scope, fields in by_scope.items():
            names = sorted(fields)
            for start in range(0, len(names), 500):
                part = names[start:start + 500]
                rows = c.execute(f"SELECT field, n FROM counters WHERE scope = ? AND field IN ({','.join('?' * len(part))})",
                                 (scope, *part)).fetchall()
                stored.update(((scope, f), n) for f, n in rows)
        for con in r.constraints:
            total = sum(new.get(k, 0) + stored.get(k, 0) for k in con.keys)
            if total > con.limit:
                return Commit("refused", rule=con.rule)
        c.executemany("INSERT INTO counters (scope, field, n) VALUES (?, ?, ?) "
                      "ON CONFLICT(scope, field) DO UPDATE SET n = n + excluded.n",
                      [(s, f, n) for (s, f), n in new.items()])
        c.execute("INSERT INTO decisions (decision_id, user_id, idempotency_key, record, charges) VALUES (?, ?, ?, ?, ?)",
                  (r.decision_id, r.user_id, r.idempotency_key, json.dumps(r.record), json.dumps(r.charges)))
        if r.pending is not None:
            c.execute("INSERT INTO pending (user_id, unless, until_s, decision_id) VALUES (?, ?, ?, ?)",
                      (r.user_id, r.pending[0], r.pending[1], r.decision_id))
        return Commit("ok")

    def release(self, decision_id: str) -> bool:
        def go(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT charges FROM decisions WHERE decision_id = ? AND released = 0", (decision_id,)).fetchone()
                if row:
                    c.executemany("UPDATE counters SET n = max(n - 1, 0) WHERE scope = ? AND field = ?",
                                  [tuple(k) for k in json.loads(row[0])])
                    c.execute("UPDATE decisions SET released = 1 WHERE decision_id = ?", (decision_id,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return row is not None
        return self._run(go)

    def suppress(self, rows: Sequence[tuple[str, str, str, str]]) -> int:
        """Add (user_id, channel or "*", reason, since ISO) rows; an existing suppression keeps its first reason."""
        def go(c: sqlite3.Connection) -> int:
            before = c.total_changes
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT OR IGNORE INTO suppressions (user_id, channel, reason, since) VALUES (?, ?, ?, ?)", rows)
            c.execute("COMMIT")
            return c.total_changes - before
        return self._run(go)

    def cancel_pending(self, user_id: str, event_type: str, at_s: float) -> list[str]:
        rows = self._run(lambda c: c.execute(
            "DELETE FROM pending WHERE user_id = ? AND unless = ? AND until_s >= ? RETURNING decision_id",
            (user_id, event_type, at_s)).fetchall())
        return [r[0] for r in rows if self.release(r[0])]

    def first_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> bool:
        cur = self._run(lambda c: c.execute("INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?, ?)",
                                            (decision_id, outcome, offer_id, channel)))
        return cur.rowcount == 1


_COMMIT_LUA = """
local p = cjson.decode(ARGV[1])
if p.idem ~= '' then
  local existing = redis.call('GET', 'i:' .. p.idem)
  if existing then return {'replay', redis.call('GET', 'd:' .. existing) or '{}'} end
end
local function hash(scope) if scope == p.capacity then return 'capacity' end return 'u:' .. scope end
local new = {}
for _, k in ipairs(p.charges) do local id = k[1] .. '\\0' .. k[2]; new[id] = (new[id] or 0) + 1 end
for _, con in ipairs(p.constraints) do
  local total = 0
  for _, k in ipairs(con.keys) do
    total = total + tonumber(redis.call('HGET', hash(k[1]), k[2]) or '0') + (new[k[1] .. '\\0' .. k[2]] or 0)
  end
  if total > con.limit then return {'refused', con.rule} end
end
for _, k in ipairs(p.charges) do
  redis.call('HINCRBY', hash(k[1]), k[2], 1)
  redis.call('EXPIRE', hash(k[1]), p.ttl)
end
redis.call('SET', 'd:' .. p.id, cjson.encode({record = p.record, charges = p.charges, released = false}), 'EX', p.ttl)
if p.idem ~= '' then redis.call('SET', 'i:' .. p.idem, p.id, 'EX', p.ttl) end
if p.pending_on ~= '' then redis.call('HSET', 'p:' .. p.user, p.id, p.pending_on .. '|' .. p.pending_until) end
return {'ok', ''}
"""

_RELEASE_LUA = """
local raw = redis.call('GET', 'd:' .. ARGV[1])
if not raw then return 0 end
local d = cjson.decode(raw)
if d.released then return 0 end
for _, k in ipairs(d.charges) do
  local h = 'u:' .. k[1]
  if k[1] == ARGV[2] then h = 'capacity' end
  if tonumber(redis.call('HGET', h, k[2]) or '0') > 0 then redis.call('HINCRBY', h, k[2], -1) end
end
d.released = true
redis.call('SET', 'd:' .. ARGV[1], cjson.encode(d), 'KEEPTTL')
return 1
"""


class RedisLedger(Ledger):
    """Ledger in Redis: per-user counter hashes, commits as one Lua script (atomic on the server)."""

    TTL_S = 60 * 86400  # counters and decisions older than the longest cap window plus a margin are not needed

    def __init__(self, url: str):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        host, _, rest = url.partition(":")
        port, _, opts = rest.partition(",")
        db = int(opts.split("=")[1]) if opts.startswith("db=") else 0
        self._errors = (redis.RedisError, OSError)
        self._r = redis.Redis(host=host, port=int(port or 6379), db=db, socket_timeout=0.5, socket_connect_timeout=0.5,
                              decode_responses=True, retry=Retry(NoBackoff(), 1))  # fail fast: the caller answers "no contact"
        self._commit = self._r.register_script(_COMMIT_LUA)
        self._release = self._r.register_script(_RELEASE_LUA)
        self.url = url

    def _run(self, fn):
        try:
            return fn(self._r)
        except self._errors as err:
            raise LedgerUnavailable(f"contact ledger redis {self.url}: {err}") from err

    def ping(self) -> None:
        self._run(lambda r: r.ping())

    def close(self) -> None:
        self._r.close()  # every write was one acknowledged command: nothing is buffered here

    def read(self, user_ids: Sequence[str]) -> Snapshot:
        def go(r) -> Snapshot:
            ids = list(dict.fromkeys(user_ids))
            pipe = r.pipeline(transaction=False)
            for u in ids:
                pipe.hgetall(f"u:{u}")
                pipe.hgetall(f"s:{u}")
            pipe.hgetall("capacity")
            res = pipe.execute()
            counts = {u: {k: int(v) for k, v in res[2 * i].items()} for i, u in enumerate(ids)}
            suppressed = {u: {k: v.split("|")[0] for k, v in res[2 * i + 1].items()} for i, u in enumerate(ids)}
            return Snapshot(counts, {k: int(v) for k, v in res[-1].items()}, suppressed)
        return self._run(go)

    def replay(self, idempotency_key: str) -> dict | None:
        def go(r) -> dict | None:
            decision_id = r.get(f"i:{idempotency_key}")
            raw = r.get(f"d:{decision_id}") if decision_id else None
            return json.loads(json.loads(raw)["record"]) if raw else None
        return self._run(go)

    def decision(self, decision_id: str) -> dict | None:
        raw = self._run(lambda r: r.get(f"d:{decision_id}"))
        return json.loads(json.loads(raw)["record"]) if raw else None

    def commit(self, reservations: Sequence[Reservation]) -> list[Commit]:
        def go(r) -> list[Commit]:
            pipe = r.pipeline(transaction=False)
            for res in reservations:
                payload = {
                    "id": res.decision_id, "user": res.user_id, "idem": res.idempotency_key or "", "ttl": self.TTL_S,
                    "capacity": CAPACITY, "record": json.dumps(res.record),  # a string: cjson would turn [] into {}
                    "charges": [list(k) for k in res.charges],
                    "constraints": [{"keys": [list(k) for k in c.keys], "limit": c.limit, "rule": c.rule} for c in res.constraints],
                    "pending_on": res.pending[0] if res.pending else "", "pending_until": res.pending[1] if res.pending else 0,
                }
                self._commit(args=[json.dumps(payload)], client=pipe)
            out = []
            for status, extra in pipe.execute():
                if status == "replay":
                    out.append(Commit("replay", record=json.loads(json.loads(extra)["record"])))
                else:
                    out.append(Commit(status, rule=extra or None))
            return out
        return self._run(go)

    def release(self, decision_id: str) -> bool:
        return bool(self._run(lambda r: self._release(args=[decision_id, CAPACITY])))

    def suppress(self, rows: Sequence[tuple[str, str, str, str]]) -> int:
        def go(r) -> int:
            pipe = r.pipeline(transaction=False)
            for user, channel, reason, since in rows:
                pipe.hsetnx(f"s:{user}", channel, f"{reason}|{since}")
            return sum(pipe.execute())
        return self._run(go)

    def cancel_pending(self, user_id: str, event_type: str, at_s: float) -> list[str]:
        def go(r) -> list[str]:
            out = []
            for decision_id, value in r.hgetall(f"p:{user_id}").items():
                unless, until = value.split("|")
                if unless == event_type and float(until) >= at_s and r.hdel(f"p:{user_id}", decision_id):
                    out.append(decision_id)
            return out
        return [d for d in self._run(go) if self.release(d)]

    def first_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> bool:
        return bool(self._run(lambda r: r.sadd(f"o:{decision_id}", f"{outcome}|{offer_id}|{channel}")))


def open_ledger(backend: str, path: Path, redis_url: str) -> Ledger:
    """The configured ledger (Settings.ledger_backend)."""
    return RedisLedger(redis_url) if backend == "redis" else SQLiteLedger(path)
