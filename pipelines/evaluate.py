"""Policy evaluation in the simulated world: the NBA engine with the current champions against baselines.

Every policy is replayed over the same fresh period (simulation/replay.py) under the same contact rules.
The model policies score each user once, with features as of the period start (the newest snapshot):
the send-time model picks each channel's best allowed local hour, the conversion and uplift models
score offer x channel at that hour, the churn model boosts retention offers, exactly the serving
engine's functions (serving/engine.py). Each day a policy contacts each reachable user with the
best allowed action of positive expected value, exploring with probability epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import TABLES
from features.feature_services import service_name
from features.feature_views import VIEWS
from features.ingest import read_raw
from features.settings import Settings
from features.store import feature_store, read_table
from serving import engine
from serving.config import Channel, Offer, OperatorConfig
from simulation.policies import Blast, NoContact, OraclePolicy, RandomPolicy, best_selling_order
from simulation.replay import Choice, Period, ReplayConfig, Situation, keep_capacity, replay
from simulation.truth import Truth

__all__ = ["ModelPolicy", "model_policies", "load_period", "evaluate_policies", "write_report", "operator_config"]

_CHUNK = 2_000  # users per scoring call: bounds the model input frame (users x offers x channels rows)


def load_period(settings: Settings) -> tuple[Period, dict[str, pd.DataFrame]]:
    """The simulated world on disk (raw tables + truth) as a replay period."""
    if not (settings.truth_dir / "truth.json").exists():
        raise FileNotFoundError(f"no simulated truth in {settings.truth_dir}: policy evaluation needs `nextbest simulate`")
    tables = {t: read_raw(settings.raw_dir, t) for t in TABLES}
    tables = {k: v for k, v in tables.items() if v is not None}
    return Period.from_tables(tables, Truth.load(settings.truth_dir)), tables


def operator_config(offers: pd.DataFrame, channels: pd.DataFrame) -> OperatorConfig:
    """An operator config whose catalog is the raw offers and channels tables (same order)."""
    return OperatorConfig(
        offers=[Offer(offer_id=str(r.offer_id), name=str(getattr(r, "name", "") or ""), kind=str(getattr(r, "kind", "product")),
                      category=str(r.category), value=float(r.value), priority=int(r.priority) if pd.notna(r.priority) else 0)
                for r in offers.itertuples(index=False)],
        channels=[Channel(channel=str(r.channel), cost=float(r.cost), quiet_hours=r.quiet_hours if isinstance(r.quiet_hours, str) else None)
                  for r in channels.itertuples(index=False)],
    )


def latest_features(settings: Settings, user_ids: np.ndarray) -> engine.Users:
    """Each user's newest feature values from the offline tables, in `user_ids` order (the online view, in bulk)."""
    index = pd.Index(user_ids)
    users: engine.Users = {"user_id": np.asarray(user_ids, dtype=object)}
    for view in VIEWS:
        try:
            df = read_table(settings, view)
        except FileNotFoundError:
            continue
        df = df.sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)
        rows = index.get_indexer(df["user_id"].astype(str))
        keep = rows >= 0
        for col in df.columns.drop(["user_id", "event_timestamp"]):
            values = df[col].to_numpy()[keep]
            numeric = pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])
            out = np.full(len(index), np.nan) if numeric else np.full(len(index), None, dtype=object)
            out[rows[keep]] = values.astype(float) if numeric else values
            users[col] = out
    return users


@dataclass(frozen=True)
class ModelPolicy:
    """The NBA engine's choice per user from precomputed expected values (U, O, C) and send hours (U, C)."""

    name: str
    ev: np.ndarray
    hours: np.ndarray
    epsilon: float = 0.0

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        n, n_o, n_c = self.ev.shape
        feasible = s.eligible[:, :, None] & s.allowed[:, None, :]
        ev = np.where(feasible, self.ev, -np.inf).reshape(n, -1)
        best = ev.argmax(axis=1)
        best_ev = ev[np.arange(n), best]
        act = best_ev > 0
        # Epsilon exploration over the feasible arms plus "no action"; record the chosen action's probability.
        k = feasible.reshape(n, -1).sum(axis=1) + 1
        explore = rng.random(n) < self.epsilon
        r = np.floor(rng.random(n) * k).astype(np.int64)
        arms = np.cumsum(feasible.reshape(n, -1), axis=1)
        pick = np.where(r < k - 1, np.argmax(arms > r[:, None], axis=1), -1)
        chosen = np.where(explore, pick, np.where(act, best, -1))
        greedy = np.where(act, best, -1)
        prob = (1 - self.epsilon) * (chosen == greedy) + self.epsilon / k
        o, c = np.divmod(chosen.clip(0), n_c)
        score = np.where(chosen >= 0, ev[np.arange(n), chosen.clip(0)], -np.inf)
        choice = Choice(np.where(chosen >= 0, o, -1), c, self.hours[np.arange(n), c], score, prob)
        return keep_capacity(choice, s.capacity_left)


def _champion_set(settings: Settings) -> engine.ModelSet:
    from training.registry import load_champions

    champions = load_champions(settings)
    store = feature_store(settings)
    columns = {}
    for kind, champ in champions.items():
        fs = store.get_feature_service(champ.model.feature_service)
        columns[kind] = [f.name for p in fs.feature_view_projections for f in p.features]
    return engine.ModelSet(models=dict(champions), columns=columns)


def model_policies(settings: Settings, period: Period, epsilon: float = 0.0,
                   models: engine.ModelSet | None = None) -> list[ModelPolicy]:
    """The NBA policy (uplift-based EV) and the propensity-only baseline, from the current champions."""
    from simulation.replay import hour_ok_matrix

    models = models if models is not None else _champion_set(settings)
    config = operator_config(period.offers, period.channels)
    channels = config.channel_names()
    users = latest_features(settings, period.user_ids)
    hour_ok = hour_ok_matrix(period.channels)
    n = period.n_users
    hours = np.zeros((n, len(channels)), dtype=np.int64)
    p_convert = np.zeros((n, len(config.offers), len(channels)))
    uplift = np.full_like(p_convert, np.nan)
    p_churn = np.zeros(n)
    for start in range(0, n, _CHUNK):
        rows = np.arange(start, min(n, start + _CHUNK))
        part = {k: v[rows] for k, v in users.items()}
        p_open = engine.send_time_scores(models, part, channels)  # (u, C, 24)
        hours[rows] = np.where(hour_ok[None], p_open, -np.inf).argmax(axis=2)
        p_convert[rows], uplift[rows] = engine.conversion_scores(models, part, config, hours[rows])
        p_churn[rows] = engine.churn_scores(models, part)
    value = np.array([o.value * o.lever for o in config.offers])
    retention = np.array([o.kind == "retention" for o in config.offers])
    boost = 1.0 + config.churn_boost * p_churn[:, None] * retention[None, :]  # (U, O)
    cost = np.array([c.cost for c in config.channels])
    gain = (value[None, :] * boost)[:, :, None]
    effect = np.where(np.isfinite(uplift), uplift, p_convert)
    return [
        ModelPolicy("nba (uplift)", effect * gain - cost, hours, epsilon),
        ModelPolicy("propensity only", p_convert * gain - cost, hours, epsilon),
    ]


def evaluate_policies(settings: Settings, config: ReplayConfig = ReplayConfig(), users: int | None = 5_000,
                      progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replay every policy over the same fresh period (on a seeded sample of users); metrics per policy, and
    the off-policy estimates of the NBA policy from the logged history next to its simulated truth."""
    period, tables = load_period(settings)
    period = period.sample(users, seed=config.seed)
    step = progress or (lambda name: None)
    step("scoring users with the champions")
    nba, propensity_only = model_policies(settings, period)
    policies = [
        nba, propensity_only,
        NoContact(),
        RandomPolicy(),
        Blast(tuple(best_selling_order(tables, period.offers)), tuple(period.channels["cost"])),
        OraclePolicy(period),
    ]
    rows = []
    for policy in policies:
        step(f"replaying {policy.name}")
        rows.append({"policy": policy.name, **replay(period, policy, config).metrics})
    table = pd.DataFrame(rows).set_index("policy")
    oracle = table.loc["oracle", "incremental_revenue"]
    table["share_of_oracle"] = table["incremental_revenue"] / oracle if oracle > 0 else np.nan
    step("off-policy estimates from the log")
    users_in = set(period.user_ids)
    logged = {**tables, "contacts": tables["contacts"][tables["contacts"]["user_id"].astype(str).isin(users_in)]}
    return table, off_policy(settings, nba, period, logged)


def write_report(table: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """The comparison as a PNG chart and an HTML page (table + chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    order = table.sort_values("incremental_revenue").index
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (col, title) in zip(axes, [("incremental_revenue", "incremental revenue"), ("contacts", "contacts"),
                                        ("unsubscribes", "unsubscribes + complaints")], strict=True):
        values = table.loc[order, col] + (table.loc[order, "complaints"] if col == "unsubscribes" else 0)
        ax.barh(list(order), values, color=["#2b8cbe" if "nba" in p else "#999999" for p in order])
        ax.set_title(title)
    fig.tight_layout()
    png = folder / "policy_comparison.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    html = folder / "policy_comparison.html"
    html.write_text(
        "<html><head><meta charset='utf-8'><title>nextbest policy comparison</title></head><body>"
        "<h1>Policies replayed over the same simulated period</h1>"
        f"{table.round(3).to_html()}<p><img src='{png.name}' alt='policy comparison chart'></p></body></html>")
    return png, html


def _recent_contacts(contacts: pd.DataFrame) -> np.ndarray:
    """For each logged row, the user's treated contacts in the 7 days before it (the fatigue the truth sees)."""
    sent = contacts["channel"].notna().to_numpy()
    frame = pd.DataFrame({"u": contacts["user_id"].astype(str).to_numpy(), "t": contacts["sent_at"].astype("int64").to_numpy(),
                          "sent": sent.astype(np.int64), "row": np.arange(len(contacts))}).sort_values(["u", "t"])
    out = np.zeros(len(frame), dtype=np.int64)
    week = 7 * 86400 * 10**9
    for _, g in frame.groupby("u", sort=False):  # per user: a two-pointer count over sorted send times
        t, s = g["t"].to_numpy(), np.cumsum(g["sent"].to_numpy())
        lo = np.searchsorted(t, t - week, side="left")
        before = np.r_[0, s][np.arange(len(t))] - np.r_[0, s][lo]
        out[g["row"].to_numpy()] = before
    return out


def off_policy(settings: Settings, policy: ModelPolicy, period: Period, tables: dict[str, pd.DataFrame],
               sample: int | None = 100_000, seed: int = 7) -> pd.DataFrame:
    """IPS, SNIPS and DR estimates of `policy` from the logged campaign history, next to the simulated truth.

    The policy maps each user to one action (offer x channel, or no contact). The reward is a conversion
    within 7 days. The truth is the oracle's P(convert) of the policy's action at each logged send time.
    """
    from simulation.truth import Oracle
    from training.ope import estimate_all

    log = tables["contacts"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if sample is not None and len(log) > sample:
        log = log.iloc[np.sort(rng.choice(len(log), size=sample, replace=False))].reset_index(drop=True)
    recent = _recent_contacts(log)
    users = pd.Index(period.user_ids).get_indexer(log["user_id"].astype(str))
    n_c = len(period.channels)
    greedy = policy.ev.reshape(len(policy.ev), -1).argmax(axis=1)
    greedy = np.where(policy.ev.reshape(len(policy.ev), -1).max(axis=1) > 0, greedy, -1)[users]
    offer_index = {o: i for i, o in enumerate(period.offers["offer_id"])}
    channel_index = {c: i for i, c in enumerate(period.channels["channel"])}
    logged_o = log["offer_id"].astype(object).map(offer_index).fillna(-1).to_numpy(dtype=np.int64)
    logged_c = log["channel"].astype(object).map(channel_index).fillna(-1).to_numpy(dtype=np.int64)
    logged = np.where(logged_c >= 0, logged_o * n_c + logged_c, -1)
    target_prob = (logged == greedy).astype(float)
    reward = log["converted_at"].notna().to_numpy(dtype=float)
    oracle = Oracle(period.truth, period.offers)
    sent_at = log["sent_at"]
    o, c = np.divmod(greedy.clip(0), n_c)
    treated = greedy >= 0
    p_true = oracle.p_organic(users, sent_at)
    if treated.any():
        p_true[treated] = oracle.p_convert(users[treated], period.offers["offer_id"].to_numpy()[o[treated]],
                                           period.channels["channel"].to_numpy()[c[treated]], sent_at[treated],
                                           recent_contacts=recent[treated])
    # Reward model for DR: the oracle's organic rate is not known to a real team, so use the logged
    # conversion rate per action as a plain, honest q-hat.
    rate = pd.Series(reward).groupby(logged).mean()
    q_logged = rate.reindex(logged).to_numpy()
    q_target = rate.reindex(greedy).fillna(reward.mean()).to_numpy()
    rows = [e.as_row() for e in estimate_all(log["propensity"].to_numpy(dtype=float), target_prob, reward, q_logged, q_target)]
    table = pd.DataFrame(rows)
    truth = float(p_true.mean())
    table["simulated_truth"] = truth
    table["error"] = (table["value"] - truth) / truth
    return table
