"""The simulated marketing world: config, `simulate`, and the raw tables plus hidden truth it produces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.types import union_categoricals

from nextbest.simulation.behaviour import concat_events, organic_events, purchase_carts
from nextbest.simulation.campaigns import CampaignPlan, run_campaigns
from nextbest.simulation.catalog import (
    CATEGORIES,
    CHANNELS,
    EVENT_TYPES,
    channels_table,
    offers_table,
    product_names,
    product_prices,
)
from nextbest.simulation.clock import TIMEZONES, to_utc_series
from nextbest.simulation.truth import Oracle, Truth, concat_truths, draw_truth

__all__ = ["WorldConfig", "World", "CHUNK_USERS", "simulate", "simulate_chunks", "write_world", "chunk_rng", "user_ids", "events_table"]

# Users simulated together, each chunk from its own random stream, so the simulator's memory is bounded by the chunk
# and not by the world (1M users in one piece peaked at 4.3 GB; in chunks of 100,000 at 1.0 GB, 0.8 GB at 100k).
# 100,000 keeps every world the project runs at or below that size (the demo's 20,000, the tests', the 100k
# benchmarks) one chunk, i.e. exactly the one-stream world of earlier versions; chunks of 20,000 took about half the
# memory for ~14 % more CPU (benchmarks/RESULTS.md, "The simulator in chunks of users").
CHUNK_USERS = 100_000

# Consent rates per channel (CHANNELS order); WeChat consent is common only in the Asian timezones.
_CONSENT = np.array([0.6, 0.45, 0.75, 0.85, 0.08])
_CONSENT_WECHAT_ASIA = 0.75


@dataclass(frozen=True)
class WorldConfig:
    """Size, period and seed of a simulated world."""

    n_users: int = 20_000
    days: int = 120  # length of the history
    start: str = "2026-06-01"  # first day of the history (UTC midnight)
    seed: int = 7
    control_share: float = 0.1  # share of targeted users held out as control
    contacts_per_week: float = 1.0  # treated contacts per reachable user per week
    campaign_every_days: int = 2  # days between campaigns
    chunk_users: int = CHUNK_USERS  # users simulated together (one random stream per chunk; see CHUNK_USERS)

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.n_users // self.chunk_users))

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start, tz="UTC")

    @property
    def end_ts(self) -> pd.Timestamp:
        """First instant after the history: nothing happens at or after it."""
        return self.start_ts + pd.Timedelta(days=self.days)


@dataclass(frozen=True, eq=False)
class World:
    """Raw tables in the contract (users, events, contacts, offers, channels, suppressions) and the hidden truth."""

    config: WorldConfig
    tables: dict[str, pd.DataFrame]
    truth: Truth

    def oracle(self) -> Oracle:
        """True response probabilities of this world (evaluation only)."""
        return Oracle(self.truth, self.tables["offers"])

    def save(self, raw_dir: Path | str, truth_dir: Path | str) -> None:
        """Write `<raw_dir>/<table>.parquet` for every table and the truth to `truth_dir`."""
        raw_dir = Path(raw_dir)
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name, df in self.tables.items():
            df.to_parquet(raw_dir / f"{name}.parquet", index=False)
        self.truth.save(truth_dir)


def user_ids(n: int, first: int = 1) -> pd.Series:
    """'u0000001', 'u0000002', ... (from number `first`) as pandas string[pyarrow]."""
    return _ids("u", np.arange(first, first + n), 7)


def _ids(prefix: str, numbers: np.ndarray, width: int, chunk: int = 1 << 21) -> pd.Series:
    """Zero-padded ids built by Arrow in chunks (millions of Python strings would cost GBs)."""
    pieces = []
    for i in range(0, max(len(numbers), 1), chunk):
        text = pc.utf8_lpad(pc.cast(pa.array(numbers[i:i + chunk]), pa.string()), width=width, padding="0")
        pieces.append(pc.binary_join_element_wise(prefix, text, ""))
    return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(pieces, type=pa.string())))


def _codes(codes: np.ndarray, categories) -> pd.Categorical:
    """A categorical of strings from integer codes (-1 = missing): cheap ids for millions of rows."""
    return pd.Categorical.from_codes(np.asarray(codes), categories=pd.Index(categories, dtype=object))


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The random stream of one chunk of users: the seed's own stream for the first (so a world of one chunk is the
    one-stream world), the seed's `chunk`-th spawned child (`SeedSequence(seed).spawn`) for the others."""
    return np.random.default_rng(seed if chunk == 0 else np.random.SeedSequence(seed, spawn_key=(chunk,)))


def simulate(config: WorldConfig = WorldConfig(), progress: Callable[[str, float], None] | None = None) -> World:
    """Simulate users, their behaviour and a randomised campaign history; deterministic given the config.

    The whole world in memory: the chunks of `simulate_chunks`, concatenated (a world of one chunk is that chunk)."""
    chunks = list(simulate_chunks(config, progress))
    if len(chunks) == 1:
        return chunks[0]
    tables = {name: _concat_rows([c.tables[name] for c in chunks if name in c.tables]) for name in chunks[0].tables}
    return World(config=config, tables=tables, truth=concat_truths([c.truth for c in chunks]))


def simulate_chunks(config: WorldConfig = WorldConfig(),
                    progress: Callable[[str, float], None] | None = None) -> Iterator[World]:
    """The world of `config` one chunk of users at a time, each a World of its users only (global user and contact
    ids; the catalog tables, offers and channels, in the first chunk only).

    Users never interact: each chunk draws from its own stream (`chunk_rng`), and a table's rows are its chunks' rows
    in chunk order, each chunk's events sorted by time (the table is not sorted by time across chunks)."""
    report = progress or (lambda step, done: None)
    n_chunks, first_contact = config.n_chunks, 1
    for k in range(n_chunks):
        first = k * config.chunk_users
        size = min(config.chunk_users, config.n_users - first)
        step = report if n_chunks == 1 else (lambda s, d, k=k: report(f"chunk {k + 1}/{n_chunks}: {s}", (k + d) / n_chunks))
        chunk = _simulate_chunk(config, size, first, first_contact, chunk_rng(config.seed, k), step)
        if k > 0:
            chunk = World(config=config, truth=chunk.truth,
                          tables={t: df for t, df in chunk.tables.items() if t not in ("offers", "channels")})
        first_contact += len(chunk.tables["contacts"])
        yield chunk
        del chunk  # the next chunk is drawn without this one's tables held


def write_world(config: WorldConfig, raw_dir: Path | str, truth_dir: Path | str,
                progress: Callable[[str, float], None] | None = None,
                each: Callable[[World], None] | None = None) -> dict[str, int]:
    """Simulate `config` into raw tables (an atomic snapshot, `features.ingest`) and its truth; rows per table.

    A world of one chunk is written whole (`write_raw`); a bigger one chunk by chunk (`write_raw_parts`), so the
    memory it takes is one chunk's plus the truth's. `each` sees every chunk before it is written."""
    from nextbest.features.ingest import write_raw, write_raw_parts

    truths: list[Truth] = []

    def chunks() -> Iterator[dict[str, pd.DataFrame]]:
        for chunk in simulate_chunks(config, progress):
            if each is not None:
                each(chunk)
            truths.append(chunk.truth)
            yield chunk.tables
            del chunk  # (as in `simulate_chunks`)

    if config.n_chunks == 1:
        tables = next(chunks())
        write_raw(tables, raw_dir)
        rows = {name: len(df) for name, df in tables.items()}
    else:
        rows = write_raw_parts(chunks(), raw_dir)
    (truths[0] if len(truths) == 1 else concat_truths(truths)).save(truth_dir)
    return rows


def _simulate_chunk(config: WorldConfig, n_users: int, first_user: int, first_contact: int, rng: np.random.Generator,
                    report: Callable[[str, float], None]) -> World:
    """Users `first_user` .. `first_user + n_users - 1` (0-based) of the world, drawn from `rng`."""
    start = config.start_ts
    report("drawing users", 0.0)
    truth = draw_truth(n_users, start, config.days, rng)
    users, consent = _users_table(truth, rng, first_user)
    offers, channels = offers_table(start), channels_table()
    prices = product_prices(config.seed)
    report("organic behaviour", 0.15)
    organic = organic_events(truth, prices, rng)
    report("campaigns", 0.45)
    plan = CampaignPlan(every_days=config.campaign_every_days, contacts_per_week=config.contacts_per_week,
                        control_share=config.control_share)
    log, caused, supp = run_campaigns(truth, offers, consent, organic, plan, rng)
    report("assembling tables", 0.75)
    ids = users["user_id"].astype(object).to_numpy()
    parts = [organic] + caused
    del organic, caused  # the parts are consumed column by column below
    parts += [purchase_carts(p, rng) for p in parts]
    tables = {
        "users": users,
        "events": events_table(concat_events(parts), ids, truth.end_ns),
        "contacts": _contacts_table(log, ids, offers, first_contact),
        "offers": offers,
        "channels": channels,
        "suppressions": _suppressions_table(supp, ids),
    }
    report("done", 1.0)
    return World(config=config, tables=tables, truth=truth)


def _concat_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of the frames in order; categorical columns stay categorical (their categories united)."""
    out = pd.concat(frames, ignore_index=True)
    for col in frames[0].columns:
        if all(isinstance(f[col].dtype, pd.CategoricalDtype) for f in frames):
            out[col] = union_categoricals([f[col] for f in frames])
    return out


def _users_table(truth: Truth, rng: np.random.Generator, first_user: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    n = truth.n_users
    asia = truth.tz < 2
    rates = np.where(asia[:, None], _CONSENT, _CONSENT)
    rates[:, CHANNELS.index("wechat")] = np.where(asia, _CONSENT_WECHAT_ASIA, _CONSENT[CHANNELS.index("wechat")])
    consent = rng.random((n, len(CHANNELS))) < rates
    users = pd.DataFrame({"user_id": user_ids(n, first_user + 1), "signup_at": to_utc_series(truth.signup_ns),
                          "timezone": _codes(truth.tz, TIMEZONES)})
    for j, ch in enumerate(CHANNELS):
        users[f"consent_{ch}"] = consent[:, j]
    # Profile extras: plausible, mildly informative (price-sensitive users skew to lower-tier cities).
    users["age"] = np.clip(rng.normal(36, 11, n), 18, 80).astype(np.int64)
    users["gender"] = _codes(rng.choice(3, n, p=[0.52, 0.45, 0.03]), ["female", "male", "other"])
    tier = 1 + np.clip(np.round(truth.price_sensitivity * 3 + rng.normal(0, 0.7, n)), 0, 3)
    users["city_tier"] = tier.astype(np.int64)
    users["device"] = _codes(rng.choice(3, n, p=[0.45, 0.45, 0.10]), ["ios", "android", "web"])
    users["acquisition_channel"] = _codes(rng.choice(5, n, p=[0.35, 0.2, 0.25, 0.1, 0.1]),
                                          ["organic", "paid_search", "social", "referral", "affiliate"])
    return users, consent


def events_table(ev: dict[str, np.ndarray], ids: np.ndarray, end_ns: int) -> pd.DataFrame:
    """Events sorted by time; consumes `ev` column by column (the table has tens of millions of rows)."""
    rows = np.argsort(ev["ts"], kind="stable")
    rows = rows[ev["ts"][rows] < end_ns]  # a no-op by construction; kept as the guarantee
    df = pd.DataFrame({"user_id": _codes(ev.pop("user")[rows], ids)})
    df["ts"] = to_utc_series(ev.pop("ts")[rows])
    df["type"] = _codes(ev.pop("type")[rows], EVENT_TYPES)
    df["product_id"] = _codes(ev.pop("product")[rows], product_names())
    df["category"] = _codes(ev.pop("category")[rows], CATEGORIES)
    df["amount"] = ev.pop("amount")[rows]
    df["quantity"] = ev.pop("quantity")[rows]
    return df


def _contacts_table(log: dict[str, np.ndarray], ids: np.ndarray, offers: pd.DataFrame, first: int = 1) -> pd.DataFrame:
    """The campaign log in contract form, contact ids numbered from `first`; consumes `log` column by column."""
    n = len(log["user"])
    df = pd.DataFrame({"contact_id": _ids("c", np.arange(first, first + n), 9)})
    df["user_id"] = _codes(log.pop("user"), ids)
    df["sent_at"] = to_utc_series(log.pop("sent"))
    campaign = log.pop("campaign")
    df["campaign_id"] = _codes(campaign, [f"cmp{c:03d}" for c in range(int(campaign.max(initial=0)) + 1)])
    df["offer_id"] = _codes(log.pop("offer"), offers["offer_id"])
    df["channel"] = _codes(log.pop("channel"), CHANNELS)
    df["variant"] = _codes(log.pop("control").astype(np.int8), ["treatment", "control"])
    df["propensity"] = log.pop("propensity").astype(np.float64)
    for col in ("delivered_at", "opened_at", "clicked_at", "converted_at"):
        df[col] = to_utc_series(log.pop(col))
    df["revenue"] = np.where(df["converted_at"].notna().to_numpy(), log.pop("revenue"), 0.0)
    for col in ("unsubscribed_at", "complained_at"):
        df[col] = to_utc_series(log.pop(col))
    return df


def _suppressions_table(supp: dict[str, np.ndarray], ids: np.ndarray) -> pd.DataFrame:
    channel = np.asarray(("*",) + CHANNELS, dtype=object)[supp["channel"] + 1]
    df = pd.DataFrame({"user_id": _codes(supp["user"], ids), "channel": channel.astype(object),
                       "reason": supp["reason"].astype(object), "since": to_utc_series(supp["since"])})
    return df.sort_values(["since", "user_id"], kind="stable").reset_index(drop=True)
