"""Train every model on the current nextbest home and report holdout quality (vs the oracle where known) and time.

Usage: python benchmarks/bench_training.py [--trials 10]   (after `nextbest simulate` and `features build/apply`)
Prints one JSON line per model plus the machine; add the figures to benchmarks/RESULTS.md with the date.
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

from features.settings import Settings
from training.jobs import MODELS, TrainConfig, read_raw_tables, train_model


def oracle_auc(settings: Settings, name: str, result) -> float | None:
    """The simulator oracle's AUC on the same holdout rows, when the world's truth is on disk."""
    truth = Path(settings.truth_dir)
    if name not in ("conversion", "offer_net") or not truth.exists():
        return None
    # The oracle needs the simulator's truth API; scored only when it exposes per-contact probabilities.
    path = truth / "contacts.parquet"
    if not path.exists():
        return None
    probs = pd.read_parquet(path)
    if "p_convert" not in probs or "contact_id" not in probs:
        return None
    from features.store import feature_store
    from training import propensity
    from training.datasets import split

    data = propensity.build_frame(feature_store(settings), read_raw_tables(settings))
    _, holdout = split(data, 0.2, settings.seed)
    p = probs.set_index("contact_id").reindex(holdout.frame["contact_id"])["p_convert"].to_numpy()
    ok = np.isfinite(p)
    return float(roc_auc_score(holdout.y[ok], p[ok])) if ok.any() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    settings = Settings()
    config = TrainConfig(trials=args.trials, seed=settings.seed)
    print(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}))
    started = time.perf_counter()
    for name in args.models.split(","):
        r = train_model(settings, name, config)
        row = {"model": name, "seconds": round(r.seconds, 1), "rows": r.rows, "promoted": r.decision["promoted"],
               **{k: round(v, 4) for k, v in {**r.metrics, **r.extra}.items()}}
        oracle = oracle_auc(settings, name, r)
        if oracle is not None:
            row["oracle_auc"] = round(oracle, 4)
            row["auc_over_oracle"] = round(r.metrics["auc"] / oracle, 3)
        print(json.dumps(row))
    print(json.dumps({"all_models_seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
