"""Segments and campaigns, stored durably in SQLite in the home (`<home>/campaigns.db`, WAL).

Every version of a campaign is kept (`campaign_versions`) and every command is recorded with its actor
(`campaign_events`): who submitted and who approved which version is always answerable. Execution keeps
its resumable cursor (`campaign_runs`) and one row per contact with the copy variant and the probability
it was allocated with (`campaign_sends`), joined to the decision log by decision_id. A trigger campaign's
decisions that did not fit its limits are kept in `campaign_given_back`, so a replayed event answers them
without their actions too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from nextbest.campaigns import lifecycle
from nextbest.campaigns.model import Campaign, CampaignSpec
from nextbest.campaigns.segments import Segment, SegmentError, check_name, check_rule

__all__ = ["CampaignStore", "NotFound", "store_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, rule TEXT NOT NULL, description TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaign_versions (id TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    at TEXT NOT NULL, actor TEXT NOT NULL, PRIMARY KEY (id, version));
CREATE TABLE IF NOT EXISTS campaign_events (id TEXT NOT NULL, at TEXT NOT NULL, actor TEXT NOT NULL,
    command TEXT NOT NULL, from_state TEXT, to_state TEXT NOT NULL, version INTEGER NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS campaign_runs (id TEXT PRIMARY KEY, version INTEGER NOT NULL, audience TEXT NOT NULL,
    cursor INTEGER NOT NULL, sends INTEGER NOT NULL, cost REAL NOT NULL, held_out INTEGER NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaign_sends (id TEXT NOT NULL, decision_id TEXT NOT NULL, user_id TEXT NOT NULL,
    offer_id TEXT NOT NULL, channel TEXT NOT NULL, variant TEXT NOT NULL, probability REAL NOT NULL,
    send_at TEXT NOT NULL, cost REAL NOT NULL, PRIMARY KEY (id, decision_id, offer_id));
CREATE TABLE IF NOT EXISTS campaign_given_back (id TEXT NOT NULL, decision_id TEXT NOT NULL, reason TEXT NOT NULL,
    at TEXT NOT NULL, PRIMARY KEY (id, decision_id));
"""
_TABLES = ("segments", "campaigns", "campaign_versions", "campaign_events", "campaign_runs", "campaign_sends",
           "campaign_given_back")


def store_path(home: Path) -> Path:
    return Path(home) / "campaigns.db"


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class CampaignStore:
    """One SQLite file; each method is one transaction."""

    def __init__(self, path: Path, four_eyes: bool = True):
        self.path = Path(path)
        self.four_eyes = four_eyes
        self._local = threading.local()
        # A connection that only reads, for `control_shares`: its data_version moves with every other commit.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._shares: tuple = (None, None, {})  # (data_version, newest spec version, shares)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        finally:
            con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread, kept open: closing the last one checkpoints the WAL (an fsync per call).
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash of the process
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # --- segments ---------------------------------------------------------------------------------

    def segment_rule(self, name: str) -> str | None:
        with self._tx() as con:
            row = con.execute("SELECT rule FROM segments WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def save_segment(self, segment: Segment, columns: set[str] | None = None, replace: bool = False) -> Segment:
        """Save after checking the rule (readable, known columns when given, saved references, no cycle)."""
        check_name(segment.name)
        check_rule(segment.rule, lambda n: segment.rule if n == segment.name else self.segment_rule(n), columns)
        now = _now()
        with self._tx() as con:
            exists = con.execute("SELECT 1 FROM segments WHERE name = ?", (segment.name,)).fetchone()
            if exists and not replace:
                raise SegmentError(f"segment {segment.name!r} exists; pass --replace to change its rule")
            con.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET rule = "
                        "excluded.rule, description = excluded.description, updated_at = excluded.updated_at",
                        (segment.name, segment.rule, segment.description, now, now))
        return segment

    def segment(self, name: str) -> Segment:
        with self._tx() as con:
            row = con.execute("SELECT name, rule, description FROM segments WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no segment {name!r}; `nextbest segment list` shows the saved ones")
        return Segment(*row)

    def segments(self) -> list[Segment]:
        with self._tx() as con:
            return [Segment(*r) for r in con.execute("SELECT name, rule, description FROM segments ORDER BY name")]

    # --- campaigns --------------------------------------------------------------------------------

    def create(self, spec: CampaignSpec, actor: str, campaign_id: str | None = None) -> Campaign:
        if not actor or not actor.strip():
            raise lifecycle.TransitionError("say who you are (--actor / `actor`): campaigns are recorded by name")
        now = datetime.now(UTC)
        campaign = Campaign(id=campaign_id or f"c-{uuid.uuid4().hex[:10]}", version=1, state="draft", spec=spec,
                            created_by=actor, updated_at=now)
        with self._tx() as con:
            if con.execute("SELECT 1 FROM campaigns WHERE id = ?", (campaign.id,)).fetchone():
                raise lifecycle.TransitionError(f"campaign {campaign.id} exists; choose another id or edit it")
            self._write(con, campaign, None, "create", actor, None)
        return campaign

    def get(self, campaign_id: str) -> Campaign:
        with self._tx() as con:
            return self._read(con, campaign_id)

    def list(self) -> list[Campaign]:
        with self._tx() as con:
            return [Campaign.model_validate_json(r[0]) for r in con.execute("SELECT doc FROM campaigns ORDER BY id")]

    def trigger_campaigns(self) -> list[Campaign]:
        """Campaigns that name an event trigger (in any state): the trigger belongs to them."""
        with self._tx() as con:
            return [Campaign.model_validate_json(r[0]) for r in con.execute(
                "SELECT doc FROM campaigns WHERE json_extract(doc, '$.spec.trigger') IS NOT NULL ORDER BY id")]

    def command(self, campaign_id: str, command: str, actor: str, note: str | None = None) -> Campaign:
        """Apply a lifecycle command atomically (the state is read and written in one transaction)."""
        with self._tx() as con:
            before = self._read(con, campaign_id)
            after = lifecycle.apply(before, command, actor, datetime.now(UTC), self.four_eyes)
            self._write(con, after, before.state, command, actor, note)
        return after

    def edit(self, campaign_id: str, spec: CampaignSpec, actor: str) -> Campaign:
        with self._tx() as con:
            before = self._read(con, campaign_id)
            after = lifecycle.edit(before, spec, actor, datetime.now(UTC))
            if after is not before:
                self._write(con, after, before.state, "edit", actor, None)
        return after

    def record_winner(self, campaign_id: str, offer_id: str, variant: str, note: str) -> Campaign:
        """Record an experiment's winner (the rollout): from now on the offer sends that copy only."""
        with self._tx() as con:
            before = self._read(con, campaign_id)
            after = before.model_copy(update={"winners": {**before.winners, offer_id: variant}})
            self._write(con, after, before.state, "winner", "experiment", f"{offer_id}: {variant} ({note})")
        return after

    def events(self, campaign_id: str) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT at, actor, command, from_state, to_state, version, note FROM campaign_events "
                               "WHERE id = ? ORDER BY rowid", (campaign_id,)).fetchall()
        return [dict(zip(("at", "actor", "command", "from", "to", "version", "note"), r, strict=True)) for r in rows]

    def versions(self, campaign_id: str) -> list[int]:
        with self._tx() as con:
            return [r[0] for r in con.execute("SELECT version FROM campaign_versions WHERE id = ? ORDER BY version",
                                              (campaign_id,))]

    def _read(self, con: sqlite3.Connection, campaign_id: str) -> Campaign:
        row = con.execute("SELECT doc FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            raise NotFound(f"no campaign {campaign_id!r}; `nextbest campaign list` shows them")
        return Campaign.model_validate_json(row[0])

    def _write(self, con: sqlite3.Connection, c: Campaign, before: str | None, command: str, actor: str,
               note: str | None) -> None:
        con.execute("INSERT INTO campaigns VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                    (c.id, c.model_dump_json()))
        con.execute("INSERT OR IGNORE INTO campaign_versions VALUES (?, ?, ?, ?, ?)",
                    (c.id, c.version, c.spec.model_dump_json(), c.updated_at.isoformat(), actor))
        con.execute("INSERT INTO campaign_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (c.id, c.updated_at.isoformat(), actor, command, before, c.state, c.version, note))

    def control_shares(self) -> dict[str, float]:
        """Campaign id -> the campaign's own control share (`control_pct` / 100), for every campaign that holds users
        out. A decision pays one pragma: after a commit by any other connection (SQLite's data_version), the newest
        spec version's rowid says whether any spec changed (sends and commands do not), and only then are the specs
        read. The same dict comes back while nothing changed."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            version = self._reader.execute("PRAGMA data_version").fetchone()[0]
            if version != self._shares[0]:
                specs = self._reader.execute("SELECT max(rowid), count(*) FROM campaign_versions").fetchone()
                if specs != self._shares[1]:
                    rows = self._reader.execute("SELECT id, json_extract(doc, '$.spec.control_pct') AS pct FROM "
                                                "campaigns WHERE pct > 0").fetchall()
                    shares = {cid: float(pct) / 100.0 for cid, pct in rows}
                    self._shares = (version, specs, shares if shares != self._shares[2] else self._shares[2])
                else:
                    self._shares = (version, specs, self._shares[2])
            return self._shares[2]

    def reset(self) -> dict[str, int]:
        """Remove every segment, campaign, run and send (a new world replaces the old one); one transaction.
        Returns how many segments and campaigns were removed."""
        with self._tx() as con:
            removed = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("segments", "campaigns")}
            for table in _TABLES:
                con.execute(f"DELETE FROM {table}")
        return removed

    # --- execution state --------------------------------------------------------------------------

    def run_state(self, campaign_id: str) -> dict | None:
        with self._tx() as con:
            row = con.execute("SELECT version, audience, cursor, sends, cost, held_out FROM campaign_runs WHERE id = ?",
                              (campaign_id,)).fetchone()
        if row is None:
            return None
        return dict(version=row[0], audience=json.loads(row[1]), cursor=row[2], sends=row[3], cost=row[4],
                    held_out=row[5])

    def start_run(self, campaign_id: str, version: int, audience: list[str]) -> dict:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO campaign_runs VALUES (?, ?, ?, 0, 0, 0, 0, ?)",
                        (campaign_id, version, json.dumps(audience), _now()))
        return dict(version=version, audience=audience, cursor=0, sends=0, cost=0.0, held_out=0)

    def advance(self, campaign_id: str, version: int, cursor: int, sends: list[tuple], held_out: int) -> tuple[int, float]:
        """Record one executed batch: its contacts and the new cursor together (a crash resumes after the last
        whole batch; the batch's idempotency keys make its replay charge nothing twice). Refuses if the campaign
        stopped being sendable meanwhile (a pause or an edit during the batch). Returns the run's sends and cost."""
        with self._tx() as con:
            campaign = self._read(con, campaign_id)
            if not lifecycle.may_send(campaign) or campaign.version != version:
                raise lifecycle.TransitionError(f"campaign {campaign_id} is {campaign.state} (version "
                                                f"{campaign.version}); stopped before recording the batch")
            con.executemany("INSERT OR IGNORE INTO campaign_sends VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(campaign_id, *s) for s in sends])
            # Totals from the rows themselves: a batch replayed after a crash (same decision ids) adds nothing.
            n, cost = con.execute("SELECT count(*), coalesce(sum(cost), 0) FROM campaign_sends WHERE id = ?",
                                  (campaign_id,)).fetchone()
            con.execute("UPDATE campaign_runs SET cursor = ?, sends = ?, cost = ?, held_out = held_out + ?, "
                        "updated_at = ? WHERE id = ?", (cursor, n, cost, held_out, _now(), campaign_id))
        return n, cost

    def add_sends(self, campaign_id: str, sends: list[tuple]) -> None:
        """Record contacts without any check (tests and imports; a trigger's go through `record_triggered`)."""
        with self._tx() as con:
            con.executemany("INSERT OR IGNORE INTO campaign_sends VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(campaign_id, *s) for s in sends])

    def totals(self, campaign_id: str) -> tuple[int, float]:
        """The campaign's recorded contacts and their channel cost."""
        with self._tx() as con:
            n, cost = con.execute("SELECT count(*), coalesce(sum(cost), 0) FROM campaign_sends WHERE id = ?",
                                  (campaign_id,)).fetchone()
        return int(n), float(cost)

    def record_triggered(self, campaign_id: str, decisions: list[tuple[str, list[tuple]]]) -> dict[str, str]:
        """Record a trigger campaign's decided contacts, (decision_id, its send rows) each, a decision whole or not
        at all: only while the campaign may send and within its `max_sends` and `budget`. One transaction, so
        concurrent /events calls (threads or workers) cannot overshoot. Returns decision_id -> why for the decisions
        left out (kept in `campaign_given_back`): the caller gives their charges back and sends none of them."""
        refused: dict[str, str] = {}
        now = _now()
        with self._tx() as con:
            campaign = self._read(con, campaign_id)
            caps = campaign.spec.caps
            n, cost = con.execute("SELECT count(*), coalesce(sum(cost), 0) FROM campaign_sends WHERE id = ?",
                                  (campaign_id,)).fetchone()
            for decision_id, rows in decisions:
                extra = sum(r[-1] for r in rows)  # a send row ends with its channel cost
                if not lifecycle.may_send(campaign):  # paused, stopped or edited since the event's context was read
                    refused[decision_id] = f"campaign {campaign_id} is {campaign.state} (version {campaign.version})"
                elif caps.max_sends is not None and n + len(rows) > caps.max_sends:
                    refused[decision_id] = f"campaign {campaign_id} reached its max_sends ({caps.max_sends})"
                elif caps.budget is not None and cost + extra > caps.budget + 1e-9:
                    refused[decision_id] = f"campaign {campaign_id} reached its budget ({caps.budget:g})"
                else:
                    con.executemany("INSERT OR IGNORE INTO campaign_sends VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [(campaign_id, *r) for r in rows])
                    n, cost = n + len(rows), cost + extra
                    continue
                con.execute("INSERT OR IGNORE INTO campaign_given_back VALUES (?, ?, ?, ?)",
                            (campaign_id, decision_id, refused[decision_id], now))
        return refused

    def given_back(self, decision_ids: list[str]) -> dict[str, str]:
        """decision_id -> why, for those of `decision_ids` a trigger campaign gave back."""
        out: dict[str, str] = {}
        if not decision_ids:
            return out
        with self._tx() as con:
            for start in range(0, len(decision_ids), 500):  # SQLite's limit on bound parameters
                part = decision_ids[start:start + 500]
                out |= dict(con.execute("SELECT decision_id, reason FROM campaign_given_back WHERE decision_id IN "
                                        f"({', '.join('?' * len(part))})", part).fetchall())
        return out

    def skip(self, campaign_id: str, version: int, cursor: int) -> None:
        """Move the run's cursor without recording contacts (a batch given back)."""
        with self._tx() as con:
            con.execute("UPDATE campaign_runs SET cursor = ?, updated_at = ? WHERE id = ? AND version = ?",
                        (cursor, _now(), campaign_id, version))

    def sends(self, campaign_id: str) -> list[dict]:
        keys = ("decision_id", "user_id", "offer_id", "channel", "variant", "probability", "send_at", "cost")
        with self._tx() as con:
            rows = con.execute(f"SELECT {', '.join(keys)} FROM campaign_sends WHERE id = ? ORDER BY rowid",
                               (campaign_id,)).fetchall()
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _now() -> str:
    return datetime.now(UTC).isoformat()
