"""A learned opt-out risk against the hand-written one (issue 16, ninth session): can P(unsubscribe or complaint)
fitted on the contact log bring the NBA's opt-outs per 1,000 contacts below propensity-only's without losing revenue?

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_opt_out_risk.py --home DIR
  [--users 3000] [--seeds 11,5,7] [--scales 1,3] [--frame CACHE.parquet]

1. **Holdout AUC.** Every contacted row of the home's contact log with the conversion FeatureService's features as of
   the send (the training join), labelled 1 when the user unsubscribed or complained within 7 days. The newest 20 %
   of sends are the holdout. A LightGBM fitted with the project's machinery (training.tabular.fit_booster: Optuna on
   a sample, refit on all training rows) on the user's features and the channel, against the serving heuristic
   (serving.engine.opt_out_risk: the channel's prior scaled by the user's 90-day record and by 1 + contacts_7d) and
   a plain baseline (the channel's prior alone), on the same holdout rows; 95 % intervals from 200 bootstrap draws
   of the holdout's users (paired: the same draws for each score).
2. **Policies.** The NBA and propensity-only replayed over 14 fresh days (the replay's seeds) under one EV
   (engine.expected_values_many) with each risk in turn (the heuristic, the learned one) at each opt-out cost scale,
   beside the history oracle: revenue, contacts, opt-outs per 1,000 contacts.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from nextbest.features.feature_services import service_name
from nextbest.features.settings import Settings
from nextbest.pipelines import evaluate
from nextbest.serving import engine
from nextbest.serving.config import load_config
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import ReplayConfig, Rules, replay
from nextbest.training.datasets import contact_frame, outcome_within, service_features
from nextbest.training.tabular import FitConfig, fit_booster

WINDOW_DAYS = 7


def labelled_frame(settings: Settings, cache: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """The contacted rows with their features at the send, the channel, and label = opted out within the window."""
    store = evaluate.feature_store(settings)
    service = service_name("conversion")
    features = list(service_features(store, service))
    if cache is not None and cache.exists():
        return pd.read_parquet(cache), features
    raw = evaluate.load_period(settings)[1]
    frame = contact_frame(store, raw, WINDOW_DAYS, service)
    log = raw["contacts"].assign(contact_id=lambda c: c["contact_id"].astype(str)).set_index("contact_id")
    log = log.loc[frame["contact_id"].astype(str)].reset_index()
    frame["label"] = np.maximum(outcome_within(log, "unsubscribed_at", WINDOW_DAYS),
                                outcome_within(log, "complained_at", WINDOW_DAYS))
    if cache is not None:
        frame.to_parquet(cache)
    return frame, features


def heuristic(frame: pd.DataFrame, config) -> np.ndarray:
    """serving's opt_out_risk for each row's user, at the row's channel."""
    users = {c: frame[c].to_numpy(dtype=float) for c in ("unsubscribes_90d", "complaints_90d", "contacts_90d", "contacts_7d")}
    users["user_id"] = frame["user_id"].to_numpy(dtype=object)
    risk = engine.opt_out_risk(users, config)
    idx = frame["channel"].map({c: i for i, c in enumerate(config.channel_names())}).to_numpy()
    return risk[np.arange(len(frame)), idx]


def prior(frame: pd.DataFrame, config) -> np.ndarray:
    rate = {c.channel: c.opt_out_rate for c in config.channels}
    return frame["channel"].map(rate).to_numpy(dtype=float)


def auc_table(y: np.ndarray, users: np.ndarray, scores: dict[str, np.ndarray], draws: int = 200, seed: int = 7) -> pd.DataFrame:
    """AUC per score with a user-clustered bootstrap 95 % interval, and each score's paired difference to the first."""
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(users, return_inverse=True)
    members = pd.Series(np.arange(len(y))).groupby(inverse).apply(np.array).to_list()
    reps = {k: [] for k in scores}
    for _ in range(draws):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(codes), len(codes))])
        for k, s in scores.items():
            reps[k].append(roc_auc_score(y[pick], s[pick]))
    first = next(iter(scores))
    rows = []
    for k, s in scores.items():
        r, d = np.array(reps[k]), np.array(reps[k]) - np.array(reps[first])
        rows.append({"score": k, "AUC": roc_auc_score(y, s), "low": np.quantile(r, 0.025), "high": np.quantile(r, 0.975),
                     f"minus {first}": roc_auc_score(y, s) - roc_auc_score(y, scores[first]),
                     "diff low": np.quantile(d, 0.025), "diff high": np.quantile(d, 0.975)})
    return pd.DataFrame(rows)


def risk_of(scorer, features: list[str], users: engine.Users, channels: list[str]) -> np.ndarray:
    """The learned P(opt-out) per (user, channel) for a period's users."""
    n = engine.n_users(users)
    frame = pd.DataFrame({c: np.tile(users[c], len(channels)) if c in users else np.full(n * len(channels), np.nan)
                          for c in features})
    frame["channel"] = np.repeat(np.asarray(channels, dtype=object), n)
    return np.asarray(scorer.predict(frame), dtype=float).reshape(len(channels), n).T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--seeds", default="11,5,7")
    parser.add_argument("--scales", default="1,3")
    parser.add_argument("--frame", type=Path, default=None, help="cache of the labelled frame (parquet)")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    settings = Settings(home=args.home)
    base = load_config(settings.home / "operator.yaml")
    started, cpu = time.perf_counter(), time.process_time()
    frame, features = labelled_frame(settings, args.frame)
    t = pd.to_datetime(frame["event_timestamp"], utc=True)
    cut = t.quantile(0.8)
    train, hold = frame[t < cut].reset_index(drop=True), frame[t >= cut].reset_index(drop=True)
    print(f"frame {len(frame):,} rows, {int(frame['label'].sum()):,} opt-outs; train {len(train):,} "
          f"({int(train['label'].sum())}), holdout {len(hold):,} ({int(hold['label'].sum())}) from {cut:%Y-%m-%d %H:%M}; "
          f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} CPU-s", flush=True)
    columns = [*features, "channel"]
    t0, c0 = time.perf_counter(), time.process_time()
    scorer = fit_booster(train, columns, train["label"].to_numpy(), service_name("conversion"),
                         FitConfig(trials=args.trials, tune_sample=len(train)))
    print(f"fit: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s; params {scorer.params_}", flush=True)
    y = hold["label"].to_numpy()
    scores = {"heuristic (serving)": heuristic(hold, base), "channel prior": prior(hold, base),
              "learned (LightGBM)": np.asarray(scorer.predict(hold), dtype=float)}
    print(auc_table(y, hold["user_id"].astype(str).to_numpy(), scores).to_markdown(index=False, floatfmt=".4f"))
    for k, s in scores.items():
        print(f"{k}: mean prediction {s.mean():.5f} against the holdout's rate {y.mean():.5f}")

    world, _ = evaluate.load_period(settings)
    models = evaluate.champion_set(settings)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0, c0 = time.perf_counter(), time.process_time()
        config = ReplayConfig(rules=Rules.of(base.caps), seed=seed)
        period = world.sample(args.users, seed=seed)
        s = evaluate.policy_scores(settings, period, models)
        users = evaluate.latest_features(settings, period.user_ids)
        risks = {"heuristic": s.opt_out, "learned": risk_of(scorer, features, users, s.config.channel_names())}
        beliefs = history_beliefs(period.truth, evaluate.load_period(settings)[1], period.user_ids, period.start)
        oracle = replay(period, OraclePolicy(period, name=evaluate.HISTORY_ORACLE, beliefs=beliefs), config).metrics
        rows.append({"seed": seed, "risk": "", "cost x": np.nan, "policy": evaluate.HISTORY_ORACLE,
                     "revenue": oracle["incremental_revenue"], "contacts": oracle["contacts"],
                     "opt-outs /1k": oracle["opt_outs_per_1k"], "sms": oracle["contacts_sms"]})
        for risk, r in risks.items():
            for scale in (float(x) for x in args.scales.split(",")):
                cfg = s.config.model_copy(update={"channels": [
                    c.model_copy(update={"opt_out_cost": c.opt_out_cost * scale}) for c in s.config.channels]})
                for name, uplift in (("nba (uplift)", True), ("propensity only", False)):
                    scores_ = evaluate.PolicyScores(cfg, s.hours, s.p_convert, s.uplift, s.p_churn, r)
                    m = replay(period, scores_.policy(name, uplift), config).metrics
                    rows.append({"seed": seed, "risk": risk, "cost x": scale, "policy": name,
                                 "revenue": m["incremental_revenue"], "contacts": m["contacts"],
                                 "opt-outs /1k": m["opt_outs_per_1k"], "sms": m["contacts_sms"]})
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s", flush=True)
    print(f"{platform.node()} {platform.processor() or platform.machine()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} "
          f"UTC, {args.users} users, 14 days, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=",.3f"))


if __name__ == "__main__":
    main()
