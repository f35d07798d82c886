"""The contact ledger: cap counters, idempotency keys, suppressions and pending triggers, changed atomically.

Two backends with one behaviour: SQLite in WAL mode (default, one file) and Redis (shared by replicas).
A commit re-checks every cap against the stored counters inside one transaction (SQLite `BEGIN
IMMEDIATE`, a Redis Lua script), so concurrent decisions can never push a counter past its cap.
The same transaction re-checks the user's suppressions, so a decision planned before an opt-out can
never be stored after it. Any backend failure raises LedgerUnavailable: the caller must then not contact
anyone.

Identity: a store gets a random identity (the sentinel) when it is created, and the home keeps a copy
(`identity_path`). Every transaction checks the store is still the one it was; a store that was deleted,
wiped (a Redis restart without persistence) or replaced raises LedgerLost and is never silently re-created:
its caps, idempotency keys and opt-outs would be gone. Accepting a new, empty store is an operator's act
(remove the identity file); restoring the old store (same identity) heals by itself.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nextbest.features.contract import spacing_ok
from nextbest.serving.policy import CAPACITY, Constraint, Key, spacing_field

__all__ = ["LedgerUnavailable", "LedgerLost", "OUTCOMES_AFTER_SEND", "Reservation", "Commit", "Snapshot", "Ledger", "SQLiteLedger", "RedisLedger", "open_ledger"]


log = logging.getLogger("nextbest.serving")

# Feedback that says the message went out (or was seen): after any of these for an action, `not_sent`
# would give back the caps of a real send, so it is refused. The rule, in one place for both backends.
OUTCOMES_AFTER_SEND = ("sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "complained")


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be read or written; no contact may be made."""


class LedgerLost(LedgerUnavailable):
    """The store is not the one this ledger was (deleted, wiped or replaced): no contact until an operator acts."""


def _expected_identity(path: Path | None) -> str | None:
    try:
        return path.read_text().strip() or None if path is not None else None
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LedgerUnavailable(f"the ledger identity file cannot be read: {err}") from err


def _keep_identity(path: Path | None, identity: str) -> None:
    """Write the home's copy of the store's identity once (atomically), so a later start can recognise the store."""
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(identity + "\n")
    tmp.replace(path)


_LOST_HELP = ("no contact until it is back: restore the store (its identity must match), or accept a new, empty "
              "ledger (caps, idempotency keys and feedback opt-outs start over) by removing the identity file")


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

    @property
    def channels(self) -> list[str]:
        """Channels the decision contacts the user on: each must still be unsuppressed when it is stored."""
        return sorted({a["channel"] for a in self.record.get("actions", [])})


@dataclass(frozen=True)
class Commit:
    """Outcome of a reservation: stored, refused (a cap a concurrent decision filled, or a suppression that
    arrived after the plan: rule "suppressed"), or a replay."""

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
    def record_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> str: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...

    identity: str | None = None  # the store's sentinel, once attached


_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (scope TEXT NOT NULL, field TEXT NOT NULL, n INTEGER NOT NULL,
                                     PRIMARY KEY (scope, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, idempotency_key TEXT UNIQUE,
                                      record TEXT NOT NULL, charges TEXT NOT NULL, released INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS suppressions (user_id TEXT NOT NULL, channel TEXT NOT NULL, reason TEXT NOT NULL,
                                         since TEXT NOT NULL, PRIMARY KEY (user_id, channel)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (user_id TEXT NOT NULL, unless TEXT NOT NULL, until_s REAL NOT NULL,
                                    decision_id TEXT NOT NULL, PRIMARY KEY (user_id, decision_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (decision_id TEXT NOT NULL, outcome TEXT NOT NULL, offer_id TEXT NOT NULL,
                                     channel TEXT NOT NULL, PRIMARY KEY (decision_id, outcome, offer_id, channel)) WITHOUT ROWID;
"""


class SQLiteLedger(Ledger):
    """Ledger in one SQLite file (WAL): one connection per thread, writes serialised by BEGIN IMMEDIATE.

    Each operation first checks that the file at `path` is still the one the thread's connection has open
    (device and inode): a deleted file would otherwise take writes nobody will ever read again.
    """

    def __init__(self, path: Path, identity_path: Path | None = None):
        self.path = Path(path)
        self.identity_path = Path(identity_path) if identity_path is not None else None
        self.identity: str | None = None
        self._local = threading.local()
        self._attach_lock = threading.Lock()
        self._opened: list[sqlite3.Connection] = []  # every thread's connection, so close() can close them all
        self._opened_lock = threading.Lock()
        try:
            self._conn()  # create the schema now so a bad path fails at start, loudly
        except LedgerLost as err:  # start anyway: not ready and no contact, with the reason on /status
            log.error("%s", err)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                raise LedgerLost(f"the contact ledger file was deleted while in use; {_LOST_HELP}") from None
            except OSError as err:
                raise LedgerUnavailable(f"contact ledger: {err}") from err
            if (st.st_dev, st.st_ino) == self._local.inode:
                return conn
            self._local.conn = None  # another file now sits at the path: attach it and check its identity
            conn.close()
        expected = self.identity or _expected_identity(self.identity_path)
        if expected is not None and not self.path.exists():
            raise LedgerLost(f"the contact ledger file is missing (this home's ledger has identity {expected[:8]}); "
                             f"{_LOST_HELP}")
        conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # mode=rw never creates a file: a ledger this home already had is not silently re-created empty.
            uri = f"file:{quote(str(self.path.resolve()))}?mode={'rw' if expected else 'rwc'}"
            conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, safe against corruption
            conn.executescript(_SCHEMA)
            st = os.stat(self.path)
            if expected is None:
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('identity', ?)", (uuid.uuid4().hex,))
            row = conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
            if row is None or (expected is not None and row[0] != expected):
                what = "has no identity (a new, empty store)" if row is None else f"has identity {row[0][:8]}"
                raise LedgerLost(f"the contact ledger file {what}, not this home's ledger {expected[:8]}; {_LOST_HELP}")
        except LedgerLost:
            conn.close()
            raise
        except (sqlite3.Error, OSError) as err:
            if conn is not None:
                conn.close()
            raise LedgerUnavailable(f"contact ledger cannot be opened: {err}") from err
        with self._attach_lock:
            try:
                _keep_identity(self.identity_path, row[0])
            except OSError as err:
                conn.close()
                raise LedgerUnavailable(f"the ledger identity file cannot be written: {err}") from err
            self.identity = row[0]
        self._local.conn, self._local.inode = conn, (st.st_dev, st.st_ino)
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
            raise LedgerUnavailable(f"contact ledger: {err}") from err

    def _check_identity(self, c: sqlite3.Connection) -> None:
        """Inside a write transaction: the store still carries the identity it had when attached."""
        row = c.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != self.identity:
            raise LedgerLost(f"the contact ledger's identity changed under a running service; {_LOST_HELP}")

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
                self._check_identity(c)
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
        channels = r.channels
        if channels:  # an opt-out stored after this decision was planned wins: the decision is planned again
            marks = ",".join("?" * (len(channels) + 1))
            if c.execute(f"SELECT 1 FROM suppressions WHERE user_id = ? AND channel IN ({marks}) LIMIT 1",
                         (r.user_id, "*", *channels)).fetchone():
                return Commit("refused", rule="suppressed")
        new: dict[Key, int] = {}
        for key in r.charges:
            new[key] = new.get(key, 0) + 1
        # Every counter the caps read, in one query per scope (not one per key): the write lock is held briefly.
        stored: dict[Key, int] = {}
        spaced = [con for con in r.constraints if con.hours]
        sums = [con for con in r.constraints if not con.hours]
        by_scope: dict[str, set[str]] = {}
        for con in sums:
            for scope, field in con.keys:
                by_scope.setdefault(scope, set()).add(field)
        for scope, fields in by_scope.items():
            names = sorted(fields)
            for start in range(0, len(names), 500):
                part = names[start:start + 500]
                rows = c.execute(f"SELECT field, n FROM counters WHERE scope = ? AND field IN ({','.join('?' * len(part))})",
                                 (scope, *part)).fetchall()
                stored.update(((scope, f), n) for f, n in rows)
        for con in sums:
            total = sum(new.get(k, 0) + stored.get(k, 0) for k in con.keys)
            if total > con.limit:
                return Commit("refused", rule=con.rule)
        for con in spaced:
            if not _spaced(c, con):
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
                self._check_identity(c)
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
            try:
                self._check_identity(c)
                c.executemany("INSERT OR IGNORE INTO suppressions (user_id, channel, reason, since) VALUES (?, ?, ?, ?)", rows)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return c.total_changes - before
        return self._run(go)

    def cancel_pending(self, user_id: str, event_type: str, at_s: float) -> list[str]:
        rows = self._run(lambda c: c.execute(
            "DELETE FROM pending WHERE user_id = ? AND unless = ? AND until_s >= ? RETURNING decision_id",
            (user_id, event_type, at_s)).fetchall())
        return [r[0] for r in rows if self.release(r[0])]

    def record_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> str:
        """Store an action's outcome once: "first", "repeat", or "conflict" (`not_sent` after it went out)."""
        def go(c: sqlite3.Connection) -> str:
            c.execute("BEGIN IMMEDIATE")
            try:
                self._check_identity(c)
                seen = {r[0] for r in c.execute("SELECT outcome FROM outcomes WHERE decision_id = ? AND offer_id = ? "
                                                "AND channel = ?", (decision_id, offer_id, channel))}
                if outcome in seen:
                    status = "repeat"
                elif outcome == "not_sent" and seen & set(OUTCOMES_AFTER_SEND):
                    status = "conflict"
                else:
                    c.execute("INSERT INTO outcomes VALUES (?, ?, ?, ?)", (decision_id, outcome, offer_id, channel))
                    status = "first"
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return status
        return self._run(go)


def _spaced(c: sqlite3.Connection, con: Constraint) -> bool:
    """The spacing rule at charge time: the new contacts (`con.keys`, hour counters of one user) with the user's
    stored ones within reach (a window either side), checked by the one definition, `spacing_ok`."""
    scope = con.keys[0][0]
    new = sorted(int(f[2:]) for _, f in con.keys)
    lo, hi = spacing_field(new[0] - con.hours + 1), spacing_field(new[-1] + con.hours - 1)
    stored = [int(f[2:]) for f, n in c.execute("SELECT field, n FROM counters WHERE scope = ? AND field BETWEEN ? AND ?",
                                               (scope, lo, hi)) for _ in range(n)]
    for k, b in enumerate(new):  # each new contact against the stored ones and the other new ones
        if not spacing_ok([stored + new[:k] + new[k + 1:]], [b], con.limit, con.hours)[0]:
            return False
    return True


IDENTITY_KEY = "ledger:identity"

# Every script first checks the store's identity: a Redis that restarted empty (no persistence) or another
# store behind the same address answers "lost", never a silent success on an empty ledger.
_COMMIT_LUA = """
local p = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) ~= p.ledger then return {'lost', ''} end
if p.idem ~= '' then
  local existing = redis.call('GET', 'i:' .. p.idem)
  if existing then return {'replay', redis.call('GET', 'd:' .. existing) or '{}'} end
end
for _, ch in ipairs(p.channels) do
  if redis.call('HEXISTS', 's:' .. p.user, ch) == 1 or redis.call('HEXISTS', 's:' .. p.user, '*') == 1 then
    return {'refused', 'suppressed'}
  end
end
local function hash(scope) if scope == p.capacity then return 'capacity' end return 'u:' .. scope end
local new = {}
for _, k in ipairs(p.charges) do local id = k[1] .. '\\0' .. k[2]; new[id] = (new[id] or 0) + 1 end
for _, con in ipairs(p.constraints) do
  if con.hours > 0 then
    -- Spacing (features/contract.py spacing_ok, transcribed): the new contacts' hour bins with the user's stored
    -- `h:` counters; for each new one, the busiest window of `hours` bins holding it must keep within the limit.
    local bins = {}
    local fields = redis.call('HGETALL', hash(con.keys[1][1]))
    for i = 1, #fields, 2 do
      if string.sub(fields[i], 1, 2) == 'h:' then
        for _ = 1, tonumber(fields[i + 1]) do bins[#bins + 1] = tonumber(string.sub(fields[i], 3)) end
      end
    end
    local fresh = {}
    for _, k in ipairs(con.keys) do fresh[#fresh + 1] = tonumber(string.sub(k[2], 3)) end
    for j, b in ipairs(fresh) do
      local others = {}
      for _, x in ipairs(bins) do others[#others + 1] = x end
      for i, x in ipairs(fresh) do if i ~= j then others[#others + 1] = x end end
      local starts = {b - con.hours + 1}
      for _, y in ipairs(others) do
        if y >= b and y < b + con.hours then starts[#starts + 1] = y - con.hours + 1 end
      end
      for _, w in ipairs(starts) do
        local n = 1
        for _, y in ipairs(others) do if y >= w and y < w + con.hours then n = n + 1 end end
        if n > con.limit then return {'refused', con.rule} end
      end
    end
  else
    local total = 0
    for _, k in ipairs(con.keys) do
      total = total + tonumber(redis.call('HGET', hash(k[1]), k[2]) or '0') + (new[k[1] .. '\\0' .. k[2]] or 0)
    end
    if total > con.limit then return {'refused', con.rule} end
  end
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
if redis.call('GET', KEYS[1]) ~= ARGV[3] then return -1 end
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

# ARGV: identity, then (user, channel, reason|since) triples.
_SUPPRESS_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = 0
for i = 2, #ARGV, 3 do n = n + redis.call('HSETNX', 's:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
return n
"""

# ARGV: identity, decision id, outcome, offer|channel, then the outcomes after which not_sent is refused.
_OUTCOME_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
local key = 'o:' .. ARGV[2]
local suffix = '|' .. ARGV[4]
if redis.call('SISMEMBER', key, ARGV[3] .. suffix) == 1 then return 'repeat' end
if ARGV[3] == 'not_sent' then
  for i = 5, #ARGV do
    if redis.call('SISMEMBER', key, ARGV[i] .. suffix) == 1 then return 'conflict' end
  end
end
redis.call('SADD', key, ARGV[3] .. suffix)
return 'first'
"""


class RedisLedger(Ledger):
    """Ledger in Redis: per-user counter hashes, commits as one Lua script (atomic on the server).

    The identity lives in the key `ledger:identity`; it is read when the ledger first reaches the server and
    checked by every script and every read after that.
    """

    TTL_S = 60 * 86400  # counters and decisions older than the longest cap window plus a margin are not needed

    def __init__(self, url: str, identity_path: Path | None = None):
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
        self._suppress = self._r.register_script(_SUPPRESS_LUA)
        self._outcome = self._r.register_script(_OUTCOME_LUA)
        self.url = url
        self.identity_path = Path(identity_path) if identity_path is not None else None
        self.identity: str | None = None
        self._attach_lock = threading.Lock()

    def _attach(self, r) -> None:
        """Learn the store's identity (creating it for a new store); refuse a store that is not this home's."""
        with self._attach_lock:
            if self.identity is not None:
                return
            expected = _expected_identity(self.identity_path)
            if expected is None:
                r.set(IDENTITY_KEY, uuid.uuid4().hex, nx=True)  # a replica that got there first keeps its identity
            stored = r.get(IDENTITY_KEY)
            if stored is None or (expected is not None and stored != expected):
                what = "has no ledger identity (wiped, or restarted without persistence)" if stored is None \
                    else f"holds another ledger ({stored[:8]})"
                raise LedgerLost(f"redis {what}, not this home's ledger {expected[:8]}; {_LOST_HELP}")
            _keep_identity(self.identity_path, stored)
            self.identity = stored

    def _lost(self) -> LedgerLost:
        return LedgerLost(f"redis no longer holds this ledger (identity {self.identity[:8]} is gone: wiped, restarted "
                          f"without persistence, or replaced); {_LOST_HELP}")

    def _run(self, fn):
        try:
            if self.identity is None:
                self._attach(self._r)
            return fn(self._r)
        except self._errors as err:
            raise LedgerUnavailable(f"contact ledger redis: {err}") from err

    def _checked(self, pipe) -> list:
        """Run a read pipeline behind a GET of the identity; the answers after it, if the store is still ours."""
        res = pipe.execute()
        if res[0] != self.identity:
            raise self._lost()
        return res[1:]

    def ping(self) -> None:
        def go(r) -> None:
            if r.get(IDENTITY_KEY) != self.identity:
                raise self._lost()
        self._run(go)

    def close(self) -> None:
        self._r.close()  # every write was one acknowledged command: nothing is buffered here

    def read(self, user_ids: Sequence[str]) -> Snapshot:
        def go(r) -> Snapshot:
            ids = list(dict.fromkeys(user_ids))
            pipe = r.pipeline(transaction=False)
            pipe.get(IDENTITY_KEY)
            for u in ids:
                pipe.hgetall(f"u:{u}")
                pipe.hgetall(f"s:{u}")
            pipe.hgetall("capacity")
            res = self._checked(pipe)
            counts = {u: {k: int(v) for k, v in res[2 * i].items()} for i, u in enumerate(ids)}
            suppressed = {u: {k: v.split("|")[0] for k, v in res[2 * i + 1].items()} for i, u in enumerate(ids)}
            return Snapshot(counts, {k: int(v) for k, v in res[-1].items()}, suppressed)
        return self._run(go)

    def _record(self, r, decision_id: str | None) -> dict | None:
        """The stored record of a decision (None: unknown), read behind the identity check."""
        pipe = r.pipeline(transaction=False)
        pipe.get(IDENTITY_KEY)
        pipe.get(f"d:{decision_id}" if decision_id else "d:")
        raw = self._checked(pipe)[0]
        return json.loads(json.loads(raw)["record"]) if raw else None

    def replay(self, idempotency_key: str) -> dict | None:
        return self._run(lambda r: self._record(r, r.get(f"i:{idempotency_key}")))

    def decision(self, decision_id: str) -> dict | None:
        return self._run(lambda r: self._record(r, decision_id))

    def commit(self, reservations: Sequence[Reservation]) -> list[Commit]:
        def go(r) -> list[Commit]:
            pipe = r.pipeline(transaction=False)
            for res in reservations:
                payload = {
                    "id": res.decision_id, "user": res.user_id, "idem": res.idempotency_key or "", "ttl": self.TTL_S,
                    "ledger": self.identity, "channels": res.channels,
                    "capacity": CAPACITY, "record": json.dumps(res.record),  # a string: cjson would turn [] into {}
                    "charges": [list(k) for k in res.charges],
                    "constraints": [{"keys": [list(k) for k in c.keys], "limit": c.limit, "rule": c.rule, "hours": c.hours}
                                    for c in res.constraints],
                    "pending_on": res.pending[0] if res.pending else "", "pending_until": res.pending[1] if res.pending else 0,
                }
                self._commit(keys=[IDENTITY_KEY], args=[json.dumps(payload)], client=pipe)
            out = []
            for status, extra in pipe.execute():
                if status == "lost":
                    raise self._lost()
                if status == "replay":
                    out.append(Commit("replay", record=json.loads(json.loads(extra)["record"])))
                else:
                    out.append(Commit(status, rule=extra or None))
            return out
        return self._run(go)

    def release(self, decision_id: str) -> bool:
        n = self._run(lambda r: self._release(keys=[IDENTITY_KEY], args=[decision_id, CAPACITY, self.identity]))
        if n == -1:
            raise self._lost()
        return bool(n)

    def suppress(self, rows: Sequence[tuple[str, str, str, str]]) -> int:
        def go(r) -> int:
            added = 0
            for start in range(0, len(rows), 1000):  # bounded scripts: the server is blocked while one runs
                args = [self.identity]
                for user, channel, reason, since in rows[start:start + 1000]:
                    args += [user, channel, f"{reason}|{since}"]
                n = self._suppress(keys=[IDENTITY_KEY], args=args)
                if n == -1:
                    raise self._lost()
                added += n
            return added
        return self._run(go)

    def cancel_pending(self, user_id: str, event_type: str, at_s: float) -> list[str]:
        def go(r) -> list[str]:
            pipe = r.pipeline(transaction=False)
            pipe.get(IDENTITY_KEY)
            pipe.hgetall(f"p:{user_id}")
            out = []
            for decision_id, value in self._checked(pipe)[0].items():
                unless, until = value.split("|")
                if unless == event_type and float(until) >= at_s and r.hdel(f"p:{user_id}", decision_id):
                    out.append(decision_id)
            return out
        return [d for d in self._run(go) if self.release(d)]

    def record_outcome(self, decision_id: str, outcome: str, offer_id: str, channel: str) -> str:
        """Store an action's outcome once: "first", "repeat", or "conflict" (`not_sent` after it went out)."""
        status = self._run(lambda r: self._outcome(keys=[IDENTITY_KEY], args=[
            self.identity, decision_id, outcome, f"{offer_id}|{channel}", *OUTCOMES_AFTER_SEND]))
        if status == "lost":
            raise self._lost()
        return status


def open_ledger(backend: str, path: Path, redis_url: str, identity_path: Path | None = None) -> Ledger:
    """The configured ledger (Settings.ledger_backend); `identity_path` keeps the home's copy of its identity."""
    return RedisLedger(redis_url, identity_path) if backend == "redis" else SQLiteLedger(path, identity_path)
