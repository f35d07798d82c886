"""A learned opt-out risk against the hand-written one (issue 16, ninth session): can P(unsubscribe or complaint)
fitted on the contact log bring the NBA's opt-outs per 1,000 contacts below propensity-only's without losing revenue?

Usage (after `make demo`, on a copy of its home): python benchmarks/bench_opt_out_risk.py --home DIR
  [--users 3000] [--seeds 11,5,7] [--scales 1,3] [--frame CACHE.parquet] [--truth-risk] [--log-value]

1. **Holdout AUC.** Every contacted row of the home's contact log with the conversion FeatureService's features as of
   the send (the training join), labelled 1 when the user unsubscribed or complained within 7 days. The newest 20 %
   of sends are the holdout. A LightGBM fitted with the project's machinery (training.tabular.fit_booster: Optuna on
   a sample, refit on all training rows) on the user's features and the channel, against the serving heuristic
   (serving.engine.opt_out_risk: the channel's prior scaled by the user's 90-day record and by 1 + contacts_7d) and
   a plain baseline (the channel's prior alone), on the same holdout rows; 95 % intervals from 200 bootstrap draws
   of the holdout's users (paired: the same draws for each score).
2. **Policies.** The NBA and propensity-only replayed over 14 fresh days (the replay's seeds) under one EV
   (engine.expected_values_many) with each risk in turn (the heuristic, the learned one) at each opt-out cost scale,
   beside the history oracle: revenue, contacts, opt-outs per 1,000 contacts. With `--truth-risk`, also the truth's
   own P(opt-out) per user and channel (after one contact in the week before) in the EV: a bound on what any learned
   risk could do.
3. **What the deciding policy's own log teaches** (`--log-value`): the NBA's 14 days replayed with their drawn
   outcomes, logged as the service's `nb-` contacts would be, and each channel's `opt_out_cost` learned from that log
   (serving.config.observed_channel_values: logged revenue per user reached, scaled to 90 days) beside the home's
   (learned from the simulated company's log); a 95 % interval from 200 bootstrap draws of the users, and the users
   reached on a channel it takes for that interval to be within +-25 % of the value (half-width ~ 1 / sqrt(users)).
   The truth's loss of a channel to compare with: `bench_opt_out_value.py --channel-loss`.
4. **Where the two policies' rates differ** (`--mix`): under main's EV, per channel, each policy's sends and opt-outs
   per 1,000, the users contacted and contacts per user, and each policy's channel mix at the other's per-channel rates.
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
from nextbest.serving.config import CHANNEL_VALUE_DAYS, load_config, observed_channel_values
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


def truth_risk(period, channels: list[str]) -> np.ndarray:
    """The truth's P(unsubscribe or complaint) per (user, channel) after one contact in the week before (the state
    of most sends under the product's spacing): what a perfect risk model would know, for a bound only."""
    from nextbest.simulation import response
    from nextbest.simulation.catalog import CHANNELS

    n = period.n_users
    u = np.repeat(np.arange(n), len(channels))
    c = np.tile(np.array([CHANNELS.index(ch) for ch in channels]), n)
    one = np.ones(len(u))
    p = response.p_unsubscribe(period.truth, u, c, one) + response.p_complaint(period.truth, u, c, one)
    return p.reshape(n, len(channels))


def channel_mix(sends: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per policy and channel: sends and opt-outs per 1,000; overall: users, contacts per user, after one contact in the
    week before, and the policy's mix at the other policy's per-channel rates."""
    (a, da), (b, db) = sends.items()
    rows = {}
    for name, d, other in ((a, da, db), (b, db, da)):
        by = d.groupby("channel")["opt_out"]
        rate, mix = by.mean(), d["channel"].value_counts(normalize=True)
        rows[name] = {**{f"{c} sends": n for c, n in by.size().items()},
                      **{f"{c} /1k": 1000 * r for c, r in rate.items()},
                      "users": d["user_idx"].nunique(), "contacts per user": len(d) / d["user_idx"].nunique(),
                      "share after 1 recent": float((d["recent_contacts"] == 1).mean()),
                      "opt-outs /1k": 1000 * d["opt_out"].mean(),
                      "own mix at the other's rates /1k": 1000 * float((mix * other.groupby("channel")["opt_out"].mean()).sum())}
    return pd.DataFrame(rows)


def log_values(sends: pd.DataFrame, draws: int = 200, seed: int = 7) -> pd.DataFrame:
    """Each channel's opt-out cost as a log of `sends` teaches it, with a user-bootstrap 95 % interval."""
    log = pd.DataFrame({"user_id": sends["user_idx"].to_numpy(), "channel": sends["channel"].to_numpy(),
                        "sent_at": sends["send_at"], "revenue": sends["revenue"].to_numpy()})
    point = observed_channel_values(log)
    rng = np.random.default_rng(seed)
    users = log["user_id"].unique()
    by_user = log.groupby("user_id").indices
    reps = []
    for _ in range(draws):
        pick = rng.choice(users, len(users))
        rows = np.concatenate([by_user[u] for u in pick])
        part = log.iloc[rows].assign(user_id=np.repeat(np.arange(len(pick)), [len(by_user[u]) for u in pick]))
        reps.append(observed_channel_values(part))
    out = []
    for c, v in point.items():
        r = np.array([x.get(c, 0.0) for x in reps])
        low, high = np.quantile(r, [0.025, 0.975])
        reached = int(log.loc[log["channel"] == c, "user_id"].nunique())
        half = (high - low) / 2 / v if v else np.nan
        out.append({"channel": c, "users reached": reached, "value (90 d)": v, "low": low, "high": high,
                    "per user-day": v / CHANNEL_VALUE_DAYS, "users for +-25 %": int(np.ceil(reached * (half / 0.25) ** 2))})
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--seeds", default="11,5,7")
    parser.add_argument("--scales", default="1,3")
    parser.add_argument("--frame", type=Path, default=None, help="cache of the labelled frame (parquet)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--truth-risk", action="store_true",
                        help="also the truth's own P(opt-out) per user and channel in the EV: a bound no learned risk can beat")
    parser.add_argument("--mix", action="store_true", help="section 4 only: the two policies' rates by channel")
    parser.add_argument("--log-value", action="store_true", help="section 3 only: the cost the NBA's own log teaches")
    args = parser.parse_args()
    settings = Settings(home=args.home)
    base = load_config(settings.home / "operator.yaml")
    if args.mix:
        world, _ = evaluate.load_period(settings)
        models = evaluate.champion_set(settings)
        for seed in (int(s) for s in args.seeds.split(",")):
            period = world.sample(args.users, seed=seed)
            s = evaluate.policy_scores(settings, period, models)
            config = ReplayConfig(rules=Rules.of(base.caps), seed=seed)
            sends = {name: replay(period, s.policy(name, uplift), config).sends.assign(
                opt_out=lambda d: d["p_unsubscribe"] + d["p_complaint"])
                for name, uplift in (("nba (uplift)", True), ("propensity only", False))}
            print(f"seed {seed}")
            print(channel_mix(sends).to_markdown(floatfmt=",.3f"), flush=True)
        return
    if args.log_value:
        world, _ = evaluate.load_period(settings)
        models = evaluate.champion_set(settings)
        for seed in (int(s) for s in args.seeds.split(",")):
            t0, c0 = time.perf_counter(), time.process_time()
            period = world.sample(args.users, seed=seed)
            s = evaluate.policy_scores(settings, period, models)
            sends = replay(period, s.policy("nba (uplift)", True), ReplayConfig(rules=Rules.of(base.caps), seed=seed),
                           record=True).sends
            table = log_values(sends).assign(**{"home's cost": lambda t: t["channel"].map(
                {c.channel: c.opt_out_cost for c in base.channels})})
            print(f"seed {seed}: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} CPU-s")
            print(table.to_markdown(index=False, floatfmt=",.3f"), flush=True)
        print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC, load average "
              f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return
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
    gain = pd.Series(scorer.importance()).sort_values(ascending=False)
    print("learned model's gain shares:", ", ".join(f"{k} {v:.3f}" for k, v in (gain / gain.sum()).head(6).items()))
    rates = frame.groupby(frame["contacts_7d"].clip(upper=4))["label"].agg(["mean", "size"])
    print("opt-out rate by contacts in the week before (4 = 4+):",
          ", ".join(f"{int(k)}: {r['mean']:.5f} ({int(r['size']):,})" for k, r in rates.iterrows()))
    record = (frame["unsubscribes_90d"].fillna(0) + frame["complaints_90d"].fillna(0)) > 0
    print(f"with an opt-out in 90 days: {frame.loc[record, 'label'].mean():.5f} ({int(record.sum()):,} rows), "
          f"without: {frame.loc[~record, 'label'].mean():.5f}", flush=True)

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
        if args.truth_risk:
            risks["truth (bound)"] = truth_risk(period, s.config.channel_names())
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
