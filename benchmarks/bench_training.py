"""Train every model on the current nextbest home; report time and holdout quality next to the simulator's oracle.

Usage: python benchmarks/bench_training.py [--trials 5]   (after `nextbest simulate` and `features build/apply`)
Prints one JSON line per model plus the machine; add the figures to benchmarks/RESULTS.md with the date.
The oracle (simulation.Oracle) scores the same holdout rows with the world's true probabilities, so
"auc_over_oracle" says how much of the learnable signal a model found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from nextbest.features.settings import Settings
from nextbest.training.datasets import TrainingSet, split
from nextbest.training.jobs import (
    MODELS,
    TrainConfig,
    model_config,
    read_raw_tables,
    shared_joins,
    train_model,
)

_DAY_S = 86_400


def recent_contacts(frame: pd.DataFrame) -> np.ndarray:
    """Sent contacts to the same user in the 7 days before each row's send, from the rows of the log given."""
    sent = frame[frame["treated"] == 1]
    user = pd.Index(pd.unique(frame["user_id"]))
    # One sortable key per (user, second): user code in the high bits, epoch seconds in the low 33.
    def key(f: pd.DataFrame, shift_s: int = 0) -> np.ndarray:
        secs = _ns(f["event_timestamp"]) // 10**9 - shift_s
        return user.get_indexer(f["user_id"]).astype("int64") << 33 | secs
    log = np.sort(key(sent))
    return np.searchsorted(log, key(frame), "left") - np.searchsorted(log, key(frame, 7 * _DAY_S), "right")


def _ns(times: pd.Series) -> np.ndarray:
    # Feast returns microsecond timestamps; the oracle reads int64 nanoseconds.
    return pd.to_datetime(times, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


class OracleView:
    """The simulator's true probabilities for rows of the contact log (None when the home has no truth)."""

    def __init__(self, settings: Settings, raw: dict[str, pd.DataFrame], contacts: pd.DataFrame):
        from nextbest.simulation import Oracle, Truth

        self.oracle = Oracle(Truth.load(settings.truth_dir), raw["offers"])
        self.user_idx = pd.Index(raw["users"]["user_id"].astype(str))
        self.recent = pd.Series(recent_contacts(contacts), index=contacts["contact_id"].to_numpy())

    def _args(self, f: pd.DataFrame):
        return (self.user_idx.get_indexer(f["user_id"].astype(str)), _ns(f["event_timestamp"]),
                self.recent.reindex(f["contact_id"]).to_numpy())

    def p_convert(self, f: pd.DataFrame) -> np.ndarray:
        u, at, recent = self._args(f)
        return self.oracle.p_convert(u, f["offer_id"].to_numpy(), f["channel"].to_numpy(), at, recent)

    def uplift(self, f: pd.DataFrame) -> np.ndarray:
        u, at, recent = self._args(f)
        return self.oracle.uplift(u, f["offer_id"].to_numpy(), f["channel"].to_numpy(), at, recent)

    def p_open(self, f: pd.DataFrame) -> np.ndarray:
        u, at, recent = self._args(f)
        hours = pd.to_numeric(f["local_hour"]).to_numpy(dtype="float64")
        return self.oracle.p_open(u, f["channel"].to_numpy(), hours, recent, at)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return round(float(roc_auc_score(y, p)), 4)


def top_share_uplift(true_uplift: np.ndarray, score: np.ndarray, top: float = 0.2) -> float:
    """Expected incremental converters (sum of true uplift) among the top `top` of rows ranked by `score`."""
    k = max(int(len(score) * top), 1)
    return float(true_uplift[np.argsort(-score, kind="stable")[:k]].sum())


def send_time_baselines(train: TrainingSet, holdout: TrainingSet) -> dict[str, float]:
    """Holdout open AUC of two rules: the user's most frequent open hour, the best global hour (from train)."""
    hour = pd.to_numeric(holdout.frame["local_hour"]).to_numpy()
    peak = pd.to_numeric(holdout.frame["peak_open_hour"], errors="coerce").to_numpy()
    gap = np.abs(hour - np.nan_to_num(peak, nan=12.0)) % 24
    by_hour = train.frame.groupby("local_hour")["label"].mean()
    return {"auc_user_peak_hour": auc(holdout.y, -np.minimum(gap, 24 - gap)),
            "auc_global_hour_rate": auc(holdout.y, by_hour.reindex(hour).fillna(by_hour.mean()).to_numpy())}


def quality(name: str, scorer, train: TrainingSet, holdout: TrainingSet, oracle: OracleView | None,
            conversion=None) -> dict[str, float]:
    """Holdout figures next to the oracle's on the same rows."""
    f = holdout.frame
    out: dict[str, float] = {}
    if name in ("conversion", "offer_net") and oracle is not None:
        out["oracle_auc"] = auc(holdout.y, oracle.p_convert(f))
    if name in ("channel", "send_time") and oracle is not None:
        out["oracle_auc_p_open"] = auc(holdout.y, oracle.p_open(f))
    if name == "send_time":
        out |= send_time_baselines(train, holdout)
    if name == "uplift" and oracle is not None:
        sent = f[f["treated"] == 1]
        truth = oracle.uplift(sent)
        out["spearman_vs_oracle"] = round(float(pd.Series(scorer.predict(sent)).corr(pd.Series(truth), "spearman")), 4)
        out["incremental_top20_by_uplift"] = round(top_share_uplift(truth, scorer.predict(sent)), 1)
        if conversion is not None:
            out["incremental_top20_by_propensity"] = round(top_share_uplift(truth, conversion.predict(sent)), 1)
        out["incremental_top20_oracle"] = round(top_share_uplift(truth, truth), 1)
        out["incremental_top20_random"] = round(float(truth.sum() * 0.2), 1)
        out["holdout_sent_rows"] = len(sent)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    settings = Settings()
    config = TrainConfig(trials=args.trials, seed=settings.seed)
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                      "python": platform.python_version(), "home": str(settings.home)}))
    from nextbest.features.store import feature_store
    from nextbest.training.datasets import contact_frame
    from nextbest.training.jobs import _MODULES
    from nextbest.training.registry import load_version

    names = args.models.split(",")
    raw = read_raw_tables(settings)
    store = feature_store(settings)
    shared = shared_joins(store, names)
    started = time.perf_counter()
    results = [train_model(settings, name, config, raw, store, shared=shared) for name in names]
    total = time.perf_counter() - started
    # Quality, outside the timed part: rebuild each split (same seed, same rows) and score the trained version.
    oracle = None
    if Path(settings.truth_dir).exists():
        contacts = contact_frame(store, raw, config.window_days, "uplift_v1", shared, treated_only=False)
        oracle = OracleView(settings, raw, contacts)
    versions = {r.name: r.version for r in results}
    conversion = load_version(settings, "conversion", versions["conversion"]) if "conversion" in versions else None
    for r in results:
        data = _MODULES[r.name].build_frame(store, raw, model_config(r.name, config), shared)
        train, holdout = split(data, config.holdout, config.seed)
        scorer = load_version(settings, r.name, r.version)
        row = {"model": r.name, "seconds": round(r.seconds, 1), "promoted": r.decision["promoted"],
               **{k: round(v, 4) for k, v in {**r.metrics, **r.extra}.items()}, "holdout_rows": r.metrics["rows"],
               "rows": r.rows,
               **quality(r.name, scorer, train, holdout, oracle, conversion)}
        if "oracle_auc" in row:
            row["auc_over_oracle"] = round(row["auc"] / row["oracle_auc"], 3)
        print(json.dumps(row))
    print(json.dumps({"all_models_seconds": round(total, 1)}))


if __name__ == "__main__":
    main()
