"""Wiring of the decision service: features, models, config, ledger and logs around the pure engine and policy.

The BentoML class in serving/service.py only translates HTTP to these methods, so everything here can
be exercised in-process with real Feast, SQLite/Redis and models.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from nextbest.features.settings import Settings
from nextbest.serving import clock as server_clock
from nextbest.serving import engine, policy
from nextbest.serving.clock import SCHEDULE_HORIZON, TimeWindow
from nextbest.serving.config import ConfigSource, OperatorConfig, default_config, write_config
from nextbest.serving.decision_log import DecisionLog
from nextbest.serving.holdout import control_of, share_not_held_out
from nextbest.serving.ledger import Ledger, LedgerUnavailable, Reservation, Snapshot, open_ledger
from nextbest.serving.privacy import describe
from nextbest.serving.schemas import (
    BatchDecideRequest,
    CampaignContext,
    DecideRequest,
    EventsRequest,
    FeedbackRequest,
    ProfileRequest,
    UserId,
)

__all__ = ["UserError", "NotFoundError", "ConflictError", "Unsafe", "Runtime", "ModelHolder", "OnlineFeatures", "default_loader"]

log = logging.getLogger("nextbest.serving")

DECISION_SERVICE = "decision_v1"
_USER_ID = TypeAdapter(Annotated[str, UserId])  # DecideRequest's rule for a user id, alone
_READ_BLOCK = 100_000  # users per batch read in `score_chunks` (~140 features: ~150 MB of arrays per block)
TAGS = ("lifecycle_stage", "rfm_segment", "value_tier", "behaviour_cluster", "scorecard", "r_score", "f_score", "m_score")
REALTIME = ("last_event_type", "last_event_at", "events_1h", "cart_open")
# Never filled from population defaults: guessing consent or a timezone would break the contact rules.
_NO_DEFAULT_PREFIXES = ("consent_", "timezone", "utc_offset")


class UserError(ValueError):
    """The caller's mistake (HTTP 400), with a message that says what to fix."""


class NotFoundError(UserError):
    """An unknown user or decision id (HTTP 404)."""


class ConflictError(UserError):
    """A request that contradicts an earlier one, e.g. an idempotency key reused for another user (HTTP 409)."""


class Unsafe(RuntimeError):
    """State the contact rules depend on is missing or unreadable: no contact, not ready (a reason code and why)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _operator_config_path(settings: Settings) -> Path:
    """The operator config file the service runs on.

    A home serving for the first time (no ledger identity yet) without `<home>/operator.yaml` gets the built-in
    catalog written there: from then on the file is the config, and its absence is an error state (no contact),
    never a silent switch to another catalog with other consent rules.
    """
    if settings.operator_config is not None:
        return settings.operator_config
    path = settings.home / "operator.yaml"
    if not path.exists() and not settings.ledger_identity_path.exists():
        write_config(default_config(), path, note="the built-in catalog, written by the decision service at its first "
                     "start in this home; edit freely, the service re-reads it. Removing it stops all contact.")
        log.warning("no operator config in this home: wrote the built-in catalog (generic offers on push, sms, email, "
                    "wechat and in-app, in-app without consent) to <home>/operator.yaml: edit it to your catalog, or "
                    "`nextbest ingest` offers and channels tables before the service's first start")
    return path


def _file_stamp(path: Path) -> tuple[int, ...] | None:
    """Identity and version of a file (inode, size, mtime, ctime), None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


_LOADED: dict = {}  # (registry, model, version) -> Champion: a version is downloaded and verified once


def default_loader(settings: Settings) -> dict:
    """The champions of the models decisions use, from the MLflow registry (training/registry.py); a model is
    downloaded only when its champion alias has moved to a version not loaded before."""
    from nextbest.training.registry import load_champions

    return load_champions(settings, kinds=tuple(engine.REQUEST_COLUMNS), cache=_LOADED)


class ModelHolder:
    """The champions in force, compiled against the live FeatureServices.

    `refresh` asks the registry which versions hold the champion alias and loads only those that moved, only for
    the models decisions use; a new set is validated against the FeatureServices it will read (each model's
    contract: every feature it reads is served, with the type it was trained on) and swapped in atomically. On
    any failure the last good set stays in force and the reason is kept in `error`.
    """

    def __init__(self, loader: Callable[[Settings], dict], settings: Settings, fields_of: Callable[[str], dict[str, str]]):
        self.loader, self.settings, self.fields_of = loader, settings, fields_of
        self.current = engine.ModelSet()
        self._signature: tuple | None = None  # the versions and FeatureService fields `current` was compiled for
        self.error: str | None = None
        self.loaded_at: float | None = None

    def refresh(self) -> engine.ModelSet:
        try:
            champions = {k: m for k, m in self.loader(self.settings).items() if k in engine.REQUEST_COLUMNS}
            fields = {kind: self.fields_of(m.model.feature_service) for kind, m in champions.items()}
            decision = self.fields_of(DECISION_SERVICE)
            for kind, m in champions.items():
                check_contract(kind, m, fields[kind], decision)
            signature = (tuple(sorted((k, m.version) for k, m in champions.items())),
                         tuple(sorted((k, tuple(f.items())) for k, f in fields.items())))
            new = self.current if signature == self._signature else \
                engine.ModelSet(models=champions, columns={k: list(f) for k, f in fields.items()}).compile()
        except Exception as err:  # registry down, a broken artifact, a model that no longer fits: keep the last good set
            self.error = describe(err)
            log.warning("model refresh failed, keeping %s: %s", self.current.versions() or "no models", self.error)
            return self.current
        if not champions and self.current.models:  # e.g. the registry file is gone: an outage, not a decision to go rule-based
            self.error = "the registry now has no champions (registry file missing?); keeping the last good models"
            log.warning("model refresh found no champions, keeping %s", self.current.versions())
            return self.current
        if new.versions() != self.current.versions():
            log.info("models now %s", new.versions() or "none (rule-based fallback)")
        self.current, self._signature = new, signature  # one reference swap: a request holds the set it started with
        self.error, self.loaded_at = None, time.time()
        return self.current


def check_contract(kind: str, champion, served: dict[str, str], decision: dict[str, str]) -> None:
    """Raise ContractError unless every feature the model reads is served by its FeatureService and by the decision
    FeatureService (the request's features), with the type recorded when it was trained."""
    from nextbest.training.compiled import ContractError

    contract = getattr(champion.model, "contract_", None) or {}
    label = f"{kind} model {champion.name}/{champion.version}"
    for name, trained in (contract.get("inputs") or {}).items():
        if trained is None:
            continue
        live = served.get(name)
        if live is None or name not in decision:
            raise ContractError(f"{label} reads feature {name!r}, which {DECISION_SERVICE if live else champion.model.feature_service} "
                                "no longer serves; retrain it on the current features or roll back the feature build")
        if live != trained:
            raise ContractError(f"{label} was trained on {name!r} as {trained}, now served as {live}; retrain it")


class OnlineFeatures:
    """The decision FeatureService from Feast's online store, with population defaults when it is down.

    The Feast registry is read once and then only when its file changes (`refresh`, off the request
    path): the store's own registry cache never expires, so no request waits for a registry reload.
    With the SQLite online store, features come from the bulk reader in features/online_sqlite.py (one
    query per request); with Redis, from Feast's reader.
    """

    def __init__(self, settings: Settings):
        from nextbest.features.store import feature_store

        self.settings = settings
        self.store = feature_store(settings, cache_ttl_seconds=0)
        self._lock = threading.Lock()  # Feast's SQLite online store shares one connection across threads
        self._service = None
        self._reader = None
        self._registry_seen = self._registry_stamp()
        self.defaults = self._population_defaults()

    def _registry_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.settings.feast_dir / "registry.db").stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def refresh(self) -> bool:
        """Re-read the Feast registry if its file changed; True when it did."""
        stamp = self._registry_stamp()
        if stamp == self._registry_seen:
            return False
        try:
            self.store.refresh_registry()
        except Exception as err:  # a registry being rewritten: keep the cached one, try again next time
            log.warning("could not refresh the Feast registry: %s", describe(err))
            return False
        self._registry_seen = stamp
        self._service, self._reader = None, None
        return True

    def service(self):
        if self._service is None:
            self._service = self.store.get_feature_service(DECISION_SERVICE)
        return self._service

    def reader(self):
        """The bulk SQLite reader of the decision FeatureService, or None for other online stores."""
        if self._reader is None and self.store.config.online_store.type == "sqlite":
            from nextbest.features.online_sqlite import OnlineReader

            self._reader = OnlineReader(self.store, self.service())
        return self._reader

    def columns_of(self, service_name: str) -> list[str]:
        return list(self.fields_of(service_name))

    def fields_of(self, service_name: str) -> dict[str, str]:
        """A FeatureService's features and their Feast types, in its order."""
        fs = self.store.get_feature_service(service_name)
        return {f.name: str(f.dtype) for p in fs.feature_view_projections for f in p.features}

    def _population_defaults(self) -> dict[str, object]:
        """Median of numbers, most common value otherwise, over each view's newest snapshot."""
        from nextbest.features.feature_views import VIEWS
        from nextbest.features.store import read_table

        out: dict[str, object] = {}
        for view in VIEWS:
            try:
                df = read_table(self.settings, view)
            except (FileNotFoundError, OSError):
                continue
            if "event_timestamp" in df and view not in ("profile", "realtime"):
                df = df[df["event_timestamp"] == df["event_timestamp"].max()]
            for col in df.columns:
                if col in ("user_id", "event_timestamp") or col.startswith(_NO_DEFAULT_PREFIXES) or df[col].isna().all():
                    continue
                s = df[col]
                out[col] = float(s.median()) if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) \
                    else s.mode().iloc[0]
        return out

    def fetch_batch(self, user_ids: list[str]) -> tuple[engine.Users, np.ndarray, bool]:
        """`fetch` for a large batch (a campaign's audience): the same features, read from the feature table files
        each view was materialised from where every user's online timestamp confirms them (SQLite online store;
        `OnlineReader.read_batch`), else as `fetch` reads them."""
        from nextbest.features.store import materialized_tables

        return self.fetch(user_ids, tables=materialized_tables(self.settings))

    def fetch(self, user_ids: list[str], tables: dict | None = None) -> tuple[engine.Users, np.ndarray, bool]:
        """Features per user (in order), which users the store knows, and whether defaults stood in."""
        try:
            reader = self.reader()
            if reader is not None:
                users = _reader_columns(reader.read_batch(user_ids, tables) if tables else reader.read(user_ids))
            else:
                with self._lock:
                    raw = self.store.get_online_features(features=self.service(),
                                                         entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
                users = _columns(raw)
        except Exception as err:  # store unreachable or broken: population defaults, flagged degraded
            log.warning("online features unavailable, using population defaults: %s", describe(err))
            raw = {k: [v] * len(user_ids) for k, v in self.defaults.items()}
            raw["user_id"] = list(user_ids)
            return _columns(raw), np.ones(len(user_ids), dtype=bool), True
        tz = users.get("timezone")
        known = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in tz.tolist()], dtype=bool) \
            if tz is not None else np.ones(len(user_ids), dtype=bool)
        return users, known, False

    def push(self, rows: pd.DataFrame) -> None:
        from nextbest.features.data_sources import REALTIME_PUSH

        with self._lock:
            self.store.push(REALTIME_PUSH, rows)

    def realtime(self, user_ids: list[str]) -> pd.DataFrame:
        with self._lock:
            return self.store.get_online_features(features=[f"realtime:{c}" for c in REALTIME],
                                                  entity_rows=[{"user_id": u} for u in user_ids]).to_df()


@dataclass
class _Job:
    """One user's decision in progress."""

    req: DecideRequest
    decision_id: str
    idem: str | None
    pending: tuple[str, float] | None = None
    replay: dict | None = None
    result: dict | None = None
    attempts: int = 0
    extra_refusals: list[policy.Refusal] = field(default_factory=list)


class _Slot:
    """One single decision waiting in the combiner: its job, then its answer or error."""

    def __init__(self, job: _Job):
        self.job, self.ready, self.lead = job, threading.Event(), False
        self.result: dict | None = None
        self.error: BaseException | None = None

    def outcome(self) -> dict:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _Combiner:
    """Concurrent single decisions share one planner call: a request that finds the planner idle runs at once with
    whatever is queued (no waiting to fill a batch); requests arriving meanwhile queue, and when the batch is done
    the first of them runs the next one. A batch holds each user and idempotency key at most once, so the ledger
    commits them exactly as separate requests; a caller's mistake in a shared batch is answered per request."""

    def __init__(self, run: Callable[[list[_Job]], list[dict]], max_batch: int = 64):
        self.run, self.max_batch = run, max_batch
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False

    def submit(self, job: _Job) -> dict:
        slot = _Slot(job)
        with self._lock:
            self._queue.append(slot)
            slot.lead = not self._leading
            self._leading = True
        if not slot.lead:
            slot.ready.wait()
        if slot.lead:
            self._lead(slot)
        return slot.outcome()

    def _lead(self, mine: _Slot) -> None:
        with self._lock:
            batch, users, keys = [], set(), set()
            for s in [mine] + [s for s in self._queue if s is not mine]:
                user, key = s.job.req.user_id, s.job.idem
                if len(batch) < self.max_batch and user not in users and (key is None or key not in keys):
                    batch.append(s)
                    users.add(user)
                    keys.add(key)
            taken = set(map(id, batch))
            self._queue = [s for s in self._queue if id(s) not in taken]
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True  # it runs the next batch when it wakes
                    nxt.ready.set()
                else:
                    self._leading = False
            for s in batch:
                s.lead = False
                s.ready.set()

    def _run(self, batch: list[_Slot]) -> None:
        try:
            for s, result in zip(batch, self.run([s.job for s in batch]), strict=True):
                s.result = result
        except UserError as err:
            if len(batch) == 1:
                batch[0].error = err
                return
            for s in batch:  # someone's mistake (raised before anything was stored): answer each on its own
                try:
                    s.result = self.run([s.job])[0]
                except Exception as own:  # noqa: BLE001 - handed to that request's caller
                    s.error = own
        except Exception as err:  # noqa: BLE001 - a fault: every request of the batch gets it, as it would alone
            for s in batch:
                s.error = err


def _tz(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        ZoneInfo(name)
        return name
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _columns(raw: dict[str, list]) -> engine.Users:
    """Feast's column lists as arrays: float64 where every value is a number (None -> NaN), object otherwise."""
    out: engine.Users = {}
    for name, values in raw.items():
        # Decided by the values' types, each checked once (not each value: ~5 % of a large batch's read).
        types = set(map(type, values))
        if types - {type(None)} and all(t is type(None) or (issubclass(t, int | float) and not issubclass(t, bool))
                                         for t in types):
            out[name] = np.array(values, dtype=float)
        else:
            out[name] = np.array(values, dtype=object)
    return out


def _reader_columns(cols) -> engine.Users:
    """What `_columns` makes of `to_dict()`, straight from the bulk reader's arrays."""
    n_u = len(cols.user_ids)
    out: engine.Users = {"user_id": np.array(cols.user_ids, dtype=object)}
    by_feature = cols.doubles.T.copy()  # (F, U): each double feature one contiguous row
    any_present = cols.present.any(axis=0).tolist()
    for j, (name, is_double) in enumerate(zip(cols.names, cols.is_double.tolist(), strict=True)):
        if not is_double:
            out[name] = _columns({name: cols.objects[j]})[name]
        elif any_present[j]:
            out[name] = by_feature[j]
        else:
            out[name] = np.full(n_u, None, dtype=object)
    return out


def _subset(users: engine.Users, rows: list[int]) -> engine.Users:
    return {k: v[rows] for k, v in users.items()}


def _features_of(users: engine.Users, i: int) -> dict[str, object]:
    """One user's features as plain Python values; NaN and missing become None."""
    out: dict[str, object] = {}
    for k, v in users.items():
        x = v[i]
        out[k] = None if x is None or (isinstance(x, float) and np.isnan(x)) else (x.item() if isinstance(x, np.generic) else x)
    return out


class Runtime:
    """Everything one service instance holds; methods mirror the HTTP endpoints."""

    def __init__(self, settings: Settings, loader: Callable[[Settings], dict] = default_loader,
                 ledger: Ledger | None = None, rng: np.random.Generator | None = None, metrics=None,
                 clock: Callable[[], datetime] | None = None):
        self.settings = settings
        # The server's clock decides; caller times must be near it. Looked up at each call, so a test can fix it.
        self.clock = clock or (lambda: server_clock.system_clock())
        skew = timedelta(seconds=settings.clock_skew_s)
        self.window = TimeWindow(timedelta(seconds=settings.max_age_s), skew)
        self.outcome_window = TimeWindow(timedelta(seconds=settings.max_outcome_age_s), skew)
        self.schedule_window = TimeWindow(timedelta(seconds=settings.max_age_s), SCHEDULE_HORIZON)
        self.config = ConfigSource(_operator_config_path(settings))
        self.features = OnlineFeatures(settings)
        self.ledger = ledger or open_ledger(settings.ledger_backend, settings.ledger_path, settings.redis_url,
                                            settings.ledger_identity_path)
        self.log = DecisionLog(settings.log_dir)
        self.models = ModelHolder(loader, settings, self.features.fields_of)
        self.models.refresh()
        self.rng = rng or np.random.default_rng(settings.seed)
        self._rng_lock = threading.Lock()
        self.metrics = metrics
        self._suppressions_synced: tuple | None = None  # (raw file stamp, ledger identity) of the last import
        try:
            self._sync_suppressions()
        except (Unsafe, LedgerUnavailable) as err:  # start anyway, deciding "no contact"; every request retries
            log.error("suppressions not imported: %s", err)
        self._combiner = _Combiner(self._decide_jobs)
        # Triggers that belong to campaigns (campaigns/api.py TriggerCampaigns, wired by the service): per trigger a
        # campaign names, the context its events decide in now, or None while no campaign of it may send.
        self.trigger_campaigns: TriggerOwners | None = None

    def _sync_suppressions(self) -> None:
        """Copy the raw suppressions table into the ledger (where decisions read them) whenever the raw snapshot
        or the ledger store changed since the last import; raises Unsafe or LedgerUnavailable."""
        from nextbest.features.ingest import read_raw

        stamp = _file_stamp(self.settings.raw_dir / "suppressions.parquet")  # where read_raw finds the table
        if self._suppressions_synced == (stamp, self.ledger.identity) and self.ledger.identity is not None:
            return
        try:
            df = read_raw(self.settings.raw_dir, "suppressions") if stamp is not None else None
        except Exception as err:  # exists but cannot be read: its opt-outs are unknown, so nobody may be contacted
            raise Unsafe("suppressions_unreadable", f"the raw suppressions table cannot be read ({type(err).__name__}); "
                         "no contact until it is fixed or re-ingested") from None
        if df is not None and not df.empty:
            since = pd.to_datetime(df["since"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            rows = list(zip(df["user_id"].astype(str), df["channel"].astype(str), df["reason"].astype(str), since, strict=True))
            self.ledger.suppress(rows)
        else:
            self.ledger.ping()  # attaches the ledger, so its identity is known
        self._suppressions_synced = (stamp, self.ledger.identity)

    def _guard(self) -> None:
        """Raise unless the state the contact rules depend on is all there: operator config, suppressions, ledger."""
        if self.config.missing:
            raise Unsafe("operator_config_missing", "the operator config file is missing; no contact until it is restored")
        self._sync_suppressions()

    # --- decide -----------------------------------------------------------------------------------

    def decide(self, req: DecideRequest) -> dict:
        """One user's decision; concurrent calls share one planner call (see `_Combiner`)."""
        self._check_times(req.now, req.context)
        return self._combiner.submit(_Job(req, _new_id(), req.idempotency_key))

    def decide_batch(self, req: BatchDecideRequest) -> list[dict]:
        if len(set(req.user_ids)) != len(req.user_ids):
            raise UserError("user_ids contains duplicates; list each user once")
        self._check_times(req.now, req.context)
        jobs = [_Job(DecideRequest(user_id=u, now=req.now, context=req.context, n_actions=req.n_actions,
                                   dry_run=req.dry_run, explain=req.explain), _new_id(),
                     f"{req.idempotency_key}:{u}" if req.idempotency_key else None) for u in req.user_ids]
        return self._decide_jobs(jobs)

    def _check_times(self, now: datetime | None, ctx: CampaignContext) -> None:
        """A caller's `now` and campaign times near the server clock (UserError otherwise), before anything is read."""
        clock = self.clock()
        _believed(self.window, "now", now, clock)
        _believed(self.schedule_window, "context.not_before", ctx.not_before, clock)
        _believed(self.schedule_window, "context.deadline", ctx.deadline, clock)

    def score(self, user_ids: list[str], context: CampaignContext, now: datetime | None = None, n_actions: int = 1,
              where: str | None = None, features: tuple[engine.Users, np.ndarray, bool] | None = None) -> list[dict]:
        """Dry-run decisions for any number of users (batch scoring): the planner of /decide_batch, under the same
        contact rules against the ledger as it stands, charging and logging nothing. Users the online store does
        not know, or outside the `where` rule (the eligibility language), are left out. `features`: what
        `OnlineFeatures.fetch` (or `fetch_batch`) returned for `user_ids`, when already read."""
        feats, known, degraded = features if features is not None else self.features.fetch(list(user_ids))
        keep = np.flatnonzero(known & policy.matches(where, feats))
        if not len(keep):
            return []
        # One request validated in full, the others copies with their own (validated) user id: validating the
        # same context once per user cost ~5 % of a large dry run.
        first = DecideRequest(user_id=user_ids[keep[0]], now=now, context=context, n_actions=n_actions, dry_run=True)
        jobs = [_Job(first.model_copy(update={"user_id": _USER_ID.validate_python(user_ids[i])}), _new_id(), None)
                for i in keep]
        kept = feats if len(keep) == len(known) else _subset(feats, list(keep))  # most batches keep every user
        return self._decide_jobs(jobs, prefetched=(kept, degraded))

    def score_chunks(self, user_ids: list[str], context: CampaignContext, now: datetime | None = None,
                     n_actions: int = 1, where: str | None = None, chunk: int = 1_000):
        """`score` over many users (a campaign's audience, the whole user base), yielding each chunk's decisions.
        Features are read a block of users at a time by the batch read (`OnlineFeatures.fetch_batch`: ~1/10 of the
        cost of reading each chunk's key-value rows), the same features `score` reads itself."""
        for first in range(0, len(user_ids), _READ_BLOCK):
            ids = list(user_ids[first:first + _READ_BLOCK])
            feats, known, degraded = self.features.fetch_batch(ids)
            for start in range(0, len(ids), chunk):
                rows = np.arange(start, min(start + chunk, len(ids)))
                yield self.score(ids[start:start + chunk], context, now, n_actions, where,
                                 features=({k: v[rows] for k, v in feats.items()}, known[rows], degraded))

    def _check(self, config: OperatorConfig, ctx: CampaignContext) -> None:
        for kind, asked, known in (("offer", ctx.offers, config.offer_ids()), ("channel", ctx.channels, config.channel_names())):
            unknown = sorted(set(asked or ()) - set(known))
            if unknown:
                raise UserError(f"unknown {kind}(s) {unknown} in context.{kind}s; known: {', '.join(known)}")
        unknown = sorted(set(ctx.variants or ()) - set(ctx.offers or config.offer_ids()))
        if unknown:
            raise UserError(f"context.variants names offer(s) {unknown} the context does not allow; give variants for "
                            f"offers in context.offers (or the operator config: {', '.join(config.offer_ids())})")
        if ctx.deadline and ctx.not_before and ctx.deadline <= ctx.not_before:
            raise UserError("context.deadline must be later than context.not_before")

    def _decide_jobs(self, jobs: list[_Job], prefetched: tuple[engine.Users, bool] | None = None) -> list[dict]:
        started = time.perf_counter()
        config = self.config.current(time.monotonic())
        models = self.models.current  # this request keeps these models even if a swap happens meanwhile
        for ctx in {id(j.req.context): j.req.context for j in jobs}.values():  # a batch's jobs share one context
            self._check(config, ctx)
        ids = [j.req.user_id for j in jobs]
        if prefetched is None:
            feats, known, features_degraded = self.features.fetch(ids)
        else:
            (feats, features_degraded), known = prefetched, np.ones(len(ids), dtype=bool)
        unknown = [u for u, k in zip(ids, known, strict=True) if not k]
        if unknown:
            self._log_unknown(unknown)
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise NotFoundError(f"unknown user_id(s): {shown} (not in the online feature store; ingest and materialise them first)")
        try:
            self._guard()
            for job in jobs:
                if job.idem is not None and not job.req.dry_run:
                    job.replay = self.ledger.replay(job.idem)
            for job in jobs:  # before anything is planned or stored: a caller's mistake changes nothing
                if job.replay is not None and job.replay["user_id"] != job.req.user_id:
                    raise ConflictError(f"idempotency_key {job.idem!r} was used for another user; use a new key")
            todo = [i for i, j in enumerate(jobs) if j.replay is None]
            while todo:
                snapshot = self.ledger.read([jobs[i].req.user_id for i in todo])
                plans = self._plan([jobs[i] for i in todo], feats if len(todo) == len(jobs) else _subset(feats, todo), snapshot, config,
                                   models, features_degraded)
                todo = self._commit([jobs[i] for i in todo], plans, todo)
        except (LedgerUnavailable, Unsafe) as err:
            reason = err.reason if isinstance(err, Unsafe) else "ledger_unavailable"
            log.error("%s, answering no contact: %s", reason, describe(err))
            for job in jobs:
                if job.result is None and job.replay is None:
                    job.result = self._no_contact(job, models, describe(err), reason=reason)
        out = []
        for job in jobs:
            if job.replay is not None:
                if job.replay["user_id"] != job.req.user_id:
                    raise ConflictError(f"idempotency_key {job.idem!r} was used for another user; use a new key")
                out.append({**job.replay, "replayed": True})
            else:
                out.append(job.result)
        if self.metrics:
            self.metrics.decided(out, time.perf_counter() - started)
        return out

    def _plan(self, jobs: list[_Job], feats: engine.Users, snapshot: Snapshot, config: OperatorConfig,
              models: engine.ModelSet, features_degraded: bool) -> list[dict]:
        """Policy, scoring and the greedy choice for all users at once (NumPy), then each user's answer."""
        channels = config.channel_names()
        offer_ids = config.offer_ids()
        n_u, n_o, n_c = len(jobs), len(config.offers), len(channels)
        clock = self.clock()
        nows = [(job.req.now or clock).astimezone(UTC) for job in jobs]
        tz_of: dict = {}
        tzs = []
        for v in feats["timezone"].tolist() if "timezone" in feats else [None] * n_u:
            key = (type(v), v) if isinstance(v, str | float | None) else (type(v), id(v))
            if key not in tz_of:
                tz_of[key] = _tz(None if isinstance(v, float) and np.isnan(v) else v)
            tzs.append(tz_of[key])
        grids_by: dict[tuple, policy.TimeGrid] = {}
        grids = []
        for job, now, tz in zip(jobs, nows, tzs, strict=True):
            ctx = job.req.context
            earliest = max(now, ctx.not_before.astimezone(UTC)) if ctx.not_before else now
            deadline = ctx.deadline.astimezone(UTC) if ctx.deadline else None
            key = (earliest, tz, deadline, ctx.send_hours)
            if key not in grids_by:
                grids_by[key] = policy.time_grid(earliest, tz, deadline, ctx.send_hours)
            grids.append(grids_by[key])
        gb = policy.grid_batch(grids)
        suppressed = [snapshot.suppressed.get(job.req.user_id, {}) for job in jobs]
        counts = policy.counts_batch([snapshot.user_counts.get(job.req.user_id, {}) for job in jobs], snapshot.capacity,
                                     config, grids, suppressed)
        masks: dict[tuple, tuple[list[bool], list[bool]]] = {}
        for job in jobs:
            ctx = job.req.context
            key = (tuple(ctx.offers or ()), tuple(ctx.channels or ()))
            if key not in masks:  # no list in the context means everything is allowed
                masks[key] = ([o in set(ctx.offers) for o in offer_ids] if ctx.offers else [True] * n_o,
                              [c in set(ctx.channels) for c in channels] if ctx.channels else [True] * n_c)
        keys = [(tuple(j.req.context.offers or ()), tuple(j.req.context.channels or ())) for j in jobs]
        allowed_o = np.array([masks[k][0] for k in keys], dtype=bool).reshape(n_u, n_o)
        allowed_c = np.array([masks[k][1] for k in keys], dtype=bool).reshape(n_u, n_c)
        tz_known = np.array([tz is not None for tz in tzs], dtype=bool)
        rules = policy.user_rules(config, feats, nows, allowed_o, allowed_c, tz_known, suppressed)
        result = policy.evaluate_many(config, rules, counts, gb)

        ucols = engine.user_columns(feats)
        try:
            p_open, slots, hours, feasible, p_convert, uplift, p_churn = _scores(models, ucols, config, gb, result)
            model_error = False
        except Exception as err:  # a model that fails at predict time: this answer falls back to the rules, flagged
            log.error("model scoring failed, answering with the rule-based rung: %s: %s", type(err).__name__, err)
            models, model_error = engine.ModelSet(), True
            p_open, slots, hours, feasible, p_convert, uplift, p_churn = _scores(models, ucols, config, gb, result)
        degraded = [r for r, missing in (("features_unavailable", features_degraded), ("model_error", model_error),
                                         ("rule_based_conversion", "conversion" not in models.models),
                                         ("rule_based_send_time", "send_time" not in models.models)) if missing]
        priority = np.array([o.priority for o in config.offers])
        unit_value = np.array([o.value * o.lever for o in config.offers])
        ev = engine.expected_values_many(p_convert, uplift, config, p_churn, engine.opt_out_risk(ucols, config))  # (U, O, C)
        greedy = engine.greedy_many(ev, feasible, priority, config.min_expected_value)
        versions = models.versions()
        thompson = config.exploration.method == "thompson"
        plans = []
        kept_of: dict[str | None, float] = {}  # campaign -> P(not held out)
        variant_draws: dict[tuple, tuple] = {}  # (the context's shares, offer) -> `_variant_draw`
        with self._rng_lock:
            for i, job in enumerate(jobs):
                actions, no_action_p = [], None
                best = slots[i]
                feasible_i, taken = feasible[i], None
                user_counts = None
                # A held-out user gets "no contact" whatever the models say, so the control is independent of them;
                # the policy's own P(no action) is still read (its greedy choice, no draw under epsilon) for the
                # logged P(no contact) below.
                control = control_of(job.req.user_id, job.req.context.campaign_id, config.holdout, nows[i])
                # The user could have been held out: an action's probability is P(not held out) x P(the policy's pick),
                # or off-policy weights on the sends miss the hold-out's share (IPS ~10 % low with a 10 % hold-out).
                campaign = job.req.context.campaign_id
                if campaign not in kept_of:
                    kept_of[campaign] = share_not_held_out(campaign, config.holdout)
                kept = kept_of[campaign]
                if control is not None:
                    # "No contact" happens when the user is held out or when the policy (exploration included) picks
                    # it: P(no contact) = P(held out) + P(not held out) x P(the policy picks no action), the same
                    # number whether the user was held out or decided (`_no_contact_probability`).
                    no_action_p = _no_contact_probability(kept, self._policy_no_action(
                        greedy, i, config, thompson, ev, feasible_i, priority, p_convert, unit_value))
                for n in range(0 if control else job.req.n_actions):
                    if n == 0 and not thompson:
                        pick = engine.choose_one(greedy, i, config.exploration, self.rng)
                    else:
                        pick = engine.choose(ev[i], feasible_i, priority, config.exploration, self.rng,
                                             config.min_expected_value, p_convert[i], unit_value)
                    if n == 0:  # P(no contact) of this decision, logged whatever it chose (off-policy weights)
                        no_action_p = _no_contact_probability(kept, pick.no_action)
                    if pick.action is None:
                        break
                    o, c = pick.action
                    s = int(best[c])
                    grid = grids[i]
                    actions.append(dict(offer_id=offer_ids[o], channel=channels[c], send_at=grid.times[s],
                                        expected_value=float(ev[i, o, c]), p_convert=float(p_convert[i, o, c]),
                                        uplift=None if np.isnan(uplift[i, o, c]) else float(uplift[i, o, c]),
                                        score=float(ev[i, o, c]), propensity=kept * pick.propensity, explored=pick.explored))
                    shares = (job.req.context.variants or {}).get(offer_ids[o])
                    if shares:  # the copy experiment's draw, logged with its probability (unbiased estimates)
                        key = (id(shares), offer_ids[o])
                        if key not in variant_draws:
                            variant_draws[key] = _variant_draw(shares)
                        names, probabilities, cdf = variant_draws[key]
                        k = _choice(self.rng, cdf)
                        actions[-1].update(variant=names[k], variant_probability=probabilities[k])
                    if n + 1 == job.req.n_actions:
                        break
                    # The next action must respect the caps together with this one: charge it locally and re-apply.
                    if user_counts is None:
                        row = np.array([i])
                        user_counts, user_rules, user_grid = counts.take(row), rules.take(row), gb.take(row)
                        taken = np.zeros((n_o, n_c), dtype=bool)
                    taken[o, c] = True
                    user_counts.channel_day[0, c, policy.WEEK - 1 + grid.local_day[s]] += 1
                    user_counts.offer_window[0, o] += 1
                    user_counts.capacity_used[0, c, grid.utc_day[s]] += 1
                    user_counts.sends = np.concatenate([user_counts.sends, grid.hour_bin[s:s + 1].reshape(1, 1)], axis=1)
                    res = policy.evaluate_many(config, user_rules, user_counts, user_grid).one(0)
                    best = engine.best_slots(p_open[i], grid.local_hour, res.slot_ok)
                    # Charging only closes actions (`& feasible[i]` keeps to the pairs that were scored).
                    feasible_i = res.offer_ok[:, None] & res.channel_ok[None, :] & (best >= 0)[None, :] & ~taken & feasible[i]
                explanation = None
                if job.req.explain:
                    grid = grids[i]
                    explanation = {"p_churn": float(p_churn[i]), "candidates": [
                        {"offer_id": offer_ids[o], "channel": channels[c], "expected_value": float(ev[i, o, c]),
                         "p_convert": float(p_convert[i, o, c]), "p_open": float(p_open[i, c, hours[i, c]]),
                         "send_at": grid.times[slots[i, c]].isoformat()}
                        for o, c in np.argwhere(feasible[i])]}
                plans.append(dict(
                    decision=dict(decision_id=job.decision_id, user_id=job.req.user_id, actions=actions,
                                  no_action_propensity=no_action_p, holdout=control[0] if control else None,
                                  holdout_share=control[1] if control else None, holdout_propensity=1.0 - kept,
                                  filtered=[r.__dict__.copy() for r in result.refusals[i] + job.extra_refusals],
                                  model_versions=dict(versions), degraded=bool(degraded), degraded_reasons=list(degraded),
                                  dry_run=job.req.dry_run, explanation=explanation),
                    tz=tzs[i], now=nows[i]))
        return plans

    def _policy_no_action(self, greedy: engine.Greedy, i: int, config, thompson: bool, ev, feasible_i, priority,
                          p_convert, unit_value) -> float:
        """P(the policy, exploration included, answers "no action" for user i), for a user it did not decide (held
        out): epsilon's from the greedy arm without a draw; Thompson sampling's from its samples (drawn from the
        service's stream, as the decision would have)."""
        if not thompson:
            return engine.no_action_probability(greedy, i, config.exploration)
        pick = engine.choose(ev[i], feasible_i, priority, config.exploration, self.rng, config.min_expected_value,
                             p_convert[i], unit_value)
        return float(pick.no_action)

    def _commit(self, jobs: list[_Job], plans: list[dict], positions: list[int]) -> list[int]:
        """Store decisions atomically with their cap re-check; returns positions to re-plan (lost a race)."""
        config = self.config.current(time.monotonic())
        reservations, waiting = [], []
        for job, plan in zip(jobs, plans, strict=True):
            d = _jsonable(plan["decision"])
            if job.req.dry_run:
                job.result = d
                continue
            acts = [(a["offer_id"], a["channel"], a["send_at"]) for a in plan["decision"]["actions"]]
            charges, constraints = policy.constraints_for(job.req.user_id, config, acts, plan["tz"])
            reservations.append(Reservation(job.decision_id, job.req.user_id, charges, constraints, d, job.idem,
                                            job.pending if acts else None))
            waiting.append((job, d, plan))
        retry = []
        committed = []
        for (job, d, plan), commit, pos in zip(waiting, self.ledger.commit(reservations) if reservations else [],
                                               [p for j, p in zip(jobs, positions, strict=True) if not j.req.dry_run], strict=True):
            if commit.status == "ok":
                job.result = d
                committed.append((job, d, plan))
            elif commit.status == "replay":
                job.replay = commit.record
            else:
                job.attempts += 1
                job.decision_id = _new_id()
                if job.attempts < 3:
                    retry.append(pos)  # a concurrent decision took the capacity: decide again on fresh counters
                else:
                    job.result = self._no_contact(job, self.models.current, None, refusal=commit.rule)
        if committed:
            self.log.decisions([_log_record(job, d, plan) for job, d, plan in committed])
        return retry

    def _no_contact(self, job: _Job, models: engine.ModelSet, error: str | None, refusal: str | None = None,
                    reason: str = "ledger_unavailable") -> dict:
        """No action: a refusal after three lost races (`refusal`), or an error state (`error`, flagged `reason`)."""
        return _jsonable(dict(decision_id=job.decision_id, user_id=job.req.user_id, actions=[], no_action_propensity=1.0,
                              holdout=None, holdout_share=None, holdout_propensity=None,
                              filtered=[vars(policy.Refusal(refusal or reason, detail=error or "lost a concurrent race three times"))],
                              model_versions=models.versions(), degraded=error is not None,
                              degraded_reasons=[reason] if error else [], dry_run=job.req.dry_run,
                              explanation=None))

    # --- events -------------------------------------------------------------------------------------

    def events(self, req: EventsRequest) -> dict:
        clock = self.clock()
        events = sorted((_believed(self.window, f"events[{k}].ts", e.ts, clock), k, e) for k, e in enumerate(req.events))
        ids = list(dict.fromkeys(e.user_id for _, _, e in events))
        _, known, _ = self.features.fetch(ids)
        unknown = [u for u, k in zip(ids, known, strict=True) if not k]
        if unknown:
            self._log_unknown(unknown)
            raise NotFoundError(f"unknown user_id(s): {', '.join(unknown[:10])}")
        config = self.config.current(time.monotonic())
        degraded = False
        try:
            self.features.push(self._realtime_rows(ids, events))
        except Exception as err:  # the online store is down: triggers still run, on the features we have
            log.warning("could not push events to the online store: %s", describe(err))
            degraded = True
        cancelled: list[str] = []
        jobs: list[_Job] = []
        owned: dict[str, CampaignContext | None] = {}
        triggers = config.triggers
        if self.trigger_campaigns is not None:
            try:
                owned = self.trigger_campaigns.contexts(clock)
            except Exception as err:  # which campaign a trigger belongs to is unknown: no trigger sends (fail closed)
                log.error("campaign store unreadable, no trigger sends: %s", describe(err))
                degraded, triggers = True, []
        try:
            for ts, _, e in events:
                for t in config.triggers:
                    if t.unless == e.type:
                        cancelled += self.ledger.cancel_pending(e.user_id, e.type, ts.timestamp())
        except LedgerUnavailable as err:
            log.error("ledger unavailable while cancelling triggers: %s", describe(err))
            degraded = True
        for ts, _, e in events:
            for t in triggers:
                if t.on != e.type or ts + timedelta(minutes=t.deadline_minutes) <= clock:
                    continue  # a late event whose trigger window has already closed sends nothing
                if t.name in owned and owned[t.name] is None:
                    continue  # the trigger belongs to campaigns, none of which is running on an approved version
                ctx = _trigger_context(t, ts, owned.get(t.name))
                if ctx is None:
                    continue
                # Decided as of the server clock: a send time is never in the past, nor charged to a past day.
                req_ = DecideRequest(user_id=e.user_id, now=clock, context=ctx)
                pending = (t.unless, (ts + timedelta(minutes=t.wait_minutes)).timestamp()) if t.unless else None
                jobs.append(_Job(req_, _new_id(), f"trigger:{t.name}:{e.user_id}:{ts.isoformat()}", pending=pending))
        triggered = self._decide_jobs(jobs) if jobs else []
        if owned and triggered:
            try:
                self.trigger_campaigns.record(triggered, [j.req.context.campaign_id for j in jobs], config)
            except Exception as err:  # decided, charged and logged already: the campaign's own record is what is lost
                log.error("trigger campaign sends not recorded in the campaign store: %s", describe(err))
                degraded = True
        return {"accepted": len(events), "triggered": triggered, "cancelled": cancelled, "degraded": degraded}

    def _realtime_rows(self, ids: list[str], events) -> pd.DataFrame:
        """The realtime view's new values, folding this request's events onto each user's stored state."""
        state = self.features.realtime(ids).set_index("user_id")
        rows = []
        for user_id in ids:
            prev = state.loc[user_id] if user_id in state.index else None
            last_at = prev["last_event_at"] if prev is not None and pd.notna(prev["last_event_at"]) else None
            count = int(prev["events_1h"]) if prev is not None and pd.notna(prev["events_1h"]) else 0
            cart = int(prev["cart_open"]) if prev is not None and pd.notna(prev["cart_open"]) else 0
            last_type = None
            for ts, _, e in events:
                if e.user_id != user_id:
                    continue
                at = int(ts.timestamp())
                count = count + 1 if last_at is not None and at - last_at < 3600 else 1
                cart = 1 if e.type == "add_to_cart" else 0 if e.type == "purchase" else cart
                last_at, last_type, last_ts = at, e.type, ts
            rows.append({"user_id": user_id, "event_timestamp": pd.Timestamp(last_ts), "last_event_type": last_type,
                         "last_event_at": int(last_at), "events_1h": int(count), "cart_open": int(cart)})
        return pd.DataFrame(rows)

    # --- feedback -----------------------------------------------------------------------------------

    def feedback(self, req: FeedbackRequest) -> dict:
        at = _believed(self.outcome_window, "at", req.at, self.clock())
        if req.revenue is not None and req.outcome != "converted":
            raise UserError("revenue is only for outcome 'converted'")
        record = self.ledger.decision(req.decision_id)
        if record is None:
            raise NotFoundError(f"unknown decision_id {req.decision_id!r} (dry runs are not stored)")
        actions = record["actions"]
        match = [a for a in actions if (req.offer_id in (None, a["offer_id"])) and (req.channel in (None, a["channel"]))]
        if not match:
            what = "has no action (it was a no-contact decision)" if not actions else "has no action with that offer/channel"
            raise ConflictError(f"decision {req.decision_id} {what}; feedback is for actions that were decided")
        action = match[0]
        status = self.ledger.record_outcome(req.decision_id, req.outcome, action["offer_id"], action["channel"])
        if status == "conflict":
            raise ConflictError(f"decision {req.decision_id} was already reported sent (or seen) on {action['channel']}; "
                                "not_sent cannot follow, and its caps stay charged")
        first = status == "first"
        out = {"recorded": first, "suppressed": None, "released": False}
        if not first:
            return out
        if req.outcome in ("unsubscribed", "complained"):
            reason = "complaint" if req.outcome == "complained" else "opt_out"
            self.ledger.suppress([(record["user_id"], action["channel"], reason, at.strftime("%Y-%m-%dT%H:%M:%SZ"))])
            out["suppressed"] = action["channel"]
        if req.outcome == "not_sent":
            out["released"] = self.ledger.release(req.decision_id)
        self.log.outcome({"decision_id": req.decision_id, "user_id": record["user_id"], "outcome": req.outcome,
                          "offer_id": action["offer_id"], "channel": action["channel"], "at": at.isoformat(),
                          "revenue": req.revenue, "propensity": action["propensity"]})
        return out

    # --- profile ------------------------------------------------------------------------------------

    def profile(self, req: ProfileRequest) -> dict:
        now = _believed(self.window, "now", req.now, self.clock())
        feats, known, degraded = self.features.fetch([req.user_id])
        if not known[0]:
            self._log_unknown([req.user_id])
            raise NotFoundError(f"unknown user_id {req.user_id!r}")
        config = self.config.current(time.monotonic())
        models = self.models.current
        f = _features_of(feats, 0)
        snapshot = self.ledger.read([req.user_id])
        grid = policy.time_grid(now, _tz(f.get("timezone")))
        counts = policy.counts_from(snapshot.user_counts[req.user_id], snapshot.capacity, config, grid, {})
        channels = config.channel_names()
        ucols = engine.user_columns(feats)
        p_open = engine.send_time_scores(models, ucols, config)
        p_convert, _ = engine.conversion_scores(models, ucols, config, p_open.argmax(axis=2))
        scores = {"p_churn": float(engine.churn_scores(models, ucols, config)[0])}
        scores |= {f"best_p_convert_{c}": float(p_convert[0, :, j].max()) for j, c in enumerate(channels)}
        return {
            "user_id": req.user_id,
            "features": {k: _plain(v) for k, v in f.items() if k != "user_id"},
            "tags": {k: _plain(f.get(k)) for k in TAGS if k in f},
            "scores": scores,
            "contacts": {c: {"today": int(counts.channel_day[j, policy.WEEK - 1]),
                             "last_7_days": int(counts.channel_day[j, :policy.WEEK].sum())} for j, c in enumerate(channels)},
            "suppressions": snapshot.suppressed[req.user_id],
            "degraded": degraded,
        }

    def _log_unknown(self, user_ids: list[str]) -> None:
        """Unknown ids in the service log as pseudonyms: a caller may send e-mail addresses as ids."""
        log.info("unknown user_id(s) %s", ", ".join(self.log.pseudonym(u) for u in user_ids[:10]))

    def close(self) -> None:
        """At shutdown, after the last request: close the ledger and flush the decision log."""
        self.ledger.close()
        self.log.close()

    def ready(self) -> tuple[bool, dict]:
        """Ready when the ledger is this home's and answers, the operator config and suppressions are in place,
        the Feast registry reads and registered models loaded; models may still be absent (rule-based, flagged)."""
        problems: list[str] = []
        ledger_ok = True
        try:
            self.ledger.ping()
        except LedgerUnavailable as err:
            ledger_ok = False
            problems.append(f"ledger_unavailable: {err}")
        if ledger_ok:
            try:
                self._guard()
            except (Unsafe, LedgerUnavailable) as err:
                problems.append(f"{getattr(err, 'reason', 'ledger_unavailable')}: {err}")
        elif self.config.missing:
            problems.append("operator_config_missing: the operator config file is missing")
        try:
            self.features.service()
        except Exception as err:  # a corrupt or missing Feast registry: no decision can read features
            problems.append(f"feature_registry_unreadable: the Feast registry cannot be read ({type(err).__name__})")
        if self.models.error and not self.models.current.models:
            problems.append("models_unavailable: registered champions could not be loaded; see model_error")
        return not problems, {"ready": not problems, "reasons": problems, "ledger": ledger_ok,
                              "models": self.models.current.versions(), "model_error": self.models.error,
                              "config_error": self.config.error}


def _believed(window: TimeWindow, name: str, value: datetime | None, clock: datetime) -> datetime:
    """A caller's time in UTC (the clock when absent), or UserError when it is too far from the clock."""
    try:
        return window.check(name, value, clock)
    except ValueError as err:
        raise UserError(str(err)) from None


def _scores(models: engine.ModelSet, ucols, config: OperatorConfig, gb, result) -> tuple:
    """Every model's scores for a batch: P(open) (U, C, 24), the best slot and its hour per channel (U, C), the
    feasible (offer, channel) pairs (U, O, C), P(convert) and uplift (U, O, C), P(churn) (U,).

    P(convert) and uplift are scored for the feasible pairs only (NaN elsewhere): nothing reads the others, and
    a campaign's few offers or a capped user's closed channels cost no model rows. P(open) likewise, for the
    channels with an allowed slot of a user with an allowed offer (no other channel can get a slot)."""
    open_channels = result.channel_ok & result.offer_ok.any(axis=1)[:, None]
    p_open = engine.send_time_scores(models, ucols, config, open_channels)  # (U, C, 24)
    slots = engine.best_slots_many(p_open, gb.local_hour, result.slot_ok)  # (U, C)
    hours = np.where(slots >= 0, np.take_along_axis(gb.local_hour, np.maximum(slots, 0), axis=1), p_open.argmax(axis=2))
    feasible = result.offer_ok[:, :, None] & result.channel_ok[:, None, :] & (slots >= 0)[:, None, :]
    p_convert, uplift = engine.conversion_scores(models, ucols, config, hours, feasible, p_open)
    p_churn = engine.churn_scores(models, ucols, config)
    return p_open, slots, hours, feasible, p_convert, uplift, p_churn


class TriggerOwners(Protocol):
    """Which campaign each trigger belongs to (campaigns/api.py TriggerCampaigns)."""

    def contexts(self, now: datetime) -> dict[str, CampaignContext | None]: ...

    def record(self, decisions: list[dict], campaign_ids: list[str | None], config: OperatorConfig) -> None: ...


def _trigger_context(t, ts: datetime, campaign: CampaignContext | None) -> CampaignContext | None:
    """An event's decision context: the trigger's wait and deadline after the event; when the trigger belongs to a
    campaign, that campaign's id, offers, channels, send hours and copy variants, and no later than its deadline
    (None when that leaves no time to send in)."""
    not_before, deadline = ts + timedelta(minutes=t.wait_minutes), ts + timedelta(minutes=t.deadline_minutes)
    if campaign is None:
        return CampaignContext(campaign_id=f"trigger:{t.name}", offers=t.offers, channels=t.channels, trigger=t.name,
                               not_before=not_before, deadline=deadline)
    deadline = min(deadline, campaign.deadline) if campaign.deadline else deadline
    if deadline <= not_before:
        return None
    return campaign.model_copy(update=dict(trigger=t.name, channels=campaign.channels or t.channels,
                                           not_before=not_before, deadline=deadline))


def _variant_draw(shares: dict[str, float]) -> tuple[list[str], list[float], np.ndarray]:
    """An offer's copy variants, their probabilities and the cumulative distribution `_choice` draws from."""
    p = np.array(list(shares.values()), dtype=float)
    p = p / p.sum()
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return list(shares), p.tolist(), cdf


def _choice(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """`rng.choice(len(cdf), p=p)` for the `cdf` of p, drawing the same number from the same stream (NumPy's own
    method: one uniform, searched in the normalised cumulative sum), at ~1/20 of its cost per call; a test holds the
    two equal."""
    return int(cdf.searchsorted(rng.random(), side="right"))


def _no_contact_probability(kept: float, policy_none: float) -> float:
    """P(a decision ends in "no contact"): held out (1 - `kept`, every hold-out scope together) or, not held out, the
    policy's "no action" (`policy_none`, its exploration included). Logged on every decision (with P(held out) as
    `holdout_propensity`), so off-policy evaluation can weigh a hold-out's "no contact" among the decisions that sent
    or held out (pipelines/logs_to_contacts.py)."""
    return float((1.0 - kept) + kept * policy_none)


def _new_id() -> str:
    return uuid.uuid4().hex


def _plain(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def _jsonable(d: dict) -> dict:
    """Datetimes as ISO-8601 text, so a stored decision replays byte for byte."""
    out = dict(d)
    out["actions"] = [{**a, "send_at": a["send_at"].isoformat() if isinstance(a["send_at"], datetime) else a["send_at"]}
                      for a in d["actions"]]
    return out


def _log_record(job: _Job, d: dict, plan: dict) -> dict:
    return {"decision_id": d["decision_id"], "at": plan["now"].isoformat(), "user_id": d["user_id"],
            "campaign_id": job.req.context.campaign_id, "trigger": job.req.context.trigger,
            "actions": [{k: a[k] for k in ("offer_id", "channel", "send_at", "propensity", "expected_value", "p_convert",
                                           "explored", "variant", "variant_probability") if k in a}
                        for a in d["actions"]],
            "no_action_propensity": d["no_action_propensity"], "holdout": d.get("holdout"),
            "holdout_share": d.get("holdout_share"), "holdout_propensity": d.get("holdout_propensity"),
            "model_versions": d["model_versions"],
            "reasons": [[r["reason"], r["offer_id"], r["channel"]] for r in d["filtered"]],
            "degraded_reasons": d["degraded_reasons"]}
