"""Uplift learners against a plain S-learner, paired on the same user folds, and their policies against the best
send-everyone policy, off-policy and cross-fitted, on the current nextbest home's contact log.

Usage: python benchmarks/bench_uplift.py [--folds 3] [--users 5000]
(after `nextbest demo`, or `ingest` + `features build/apply` of a company's experiment export).
Prints JSON lines: per learner and offer the Qini AUC per fold (scikit-uplift's normalised definition, controls
scored for that offer), the paired gap to the S-learner with its interval, then the off-policy table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.features.store import feature_store
from nextbest.pipelines.offpolicy import LogsConfig, policy_values
from nextbest.training.datasets import TrainingSet
from nextbest.training.jobs import read_raw_tables
from nextbest.training.metrics import fold_interval, per_offer_uplift_metrics
from nextbest.training.tabular import FitConfig, fit_booster
from nextbest.training.uplift import (
    UpliftConfig,
    build_frame,
    candidates,
    fit_learner,
    offer_scores,
    user_folds,
)


class SLearner:
    """The reference: one LightGBM over user features, the action's columns and a treated flag; uplift =
    m(user, action, treated) - m(user, no action, control)."""

    def __init__(self, train: TrainingSet, config: UpliftConfig):
        frame = train.frame.assign(treated_flag=train.frame[train.treatment].astype("int64"))
        self.request = list(train.request)
        self.model = fit_booster(frame, [*train.inputs, "treated_flag"], train.y, train.feature_service, config.fit)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        sent = frame.assign(treated_flag=1)
        held = frame.assign(treated_flag=0, **{c: None for c in self.request if c != "local_hour"})
        return self.model.predict(sent) - self.model.predict(held)


def per_offer_qini(scorer, test: TrainingSet, seed: int) -> dict[str, float]:
    rows, scores = offer_scores(scorer, test, seed)
    out = {}
    for offer, score in scores.items():
        keep = (rows["_offer"] == offer).to_numpy()
        m = per_offer_uplift_metrics(rows["label"].to_numpy()[keep], rows["_treated"].to_numpy()[keep],
                                     rows["_offer"].to_numpy()[keep], {offer: score[keep]}, min_rows=50)
        if offer in m:
            out[offer] = m[offer]["qini_auc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--users", type=int, default=5_000, help="users sampled from the log (0 = all)")
    parser.add_argument("--trials", type=int, default=1)
    args = parser.parse_args()
    settings = Settings()
    raw = read_raw_tables(settings)
    ids = raw["contacts"]["user_id"].astype(str)
    if args.users and ids.nunique() > args.users:
        keep = np.random.default_rng(settings.seed).choice(np.sort(ids.unique()), size=args.users, replace=False)
        raw["contacts"] = raw["contacts"][ids.isin(set(keep)).to_numpy()]
    started = time.perf_counter()
    data = build_frame(feature_store(settings), raw, UpliftConfig())
    config = UpliftConfig(fit=FitConfig(trials=args.trials, max_rounds=200, seed=settings.seed))
    folds = user_folds(data.frame["user_id"].astype(str).to_numpy(), args.folds, settings.seed)
    learners = ["s", *candidates(data)]
    qini: dict[str, list[dict[str, float]]] = {name: [] for name in learners}
    for k in range(args.folds):
        train, test = data.subset(folds != k), data.subset(folds == k)
        for name in learners:
            scorer = SLearner(train, config) if name == "s" else fit_learner(name, train, config)
            qini[name].append(per_offer_qini(scorer, test, settings.seed + k))
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "rows": len(data.frame), "folds": args.folds}
    offers = sorted(set.intersection(*[set(f) for f in qini["s"]]))
    for name in learners:
        for offer in offers:
            values = [f.get(offer, np.nan) for f in qini[name]]
            gap = [a.get(offer, np.nan) - b.get(offer, np.nan) for a, b in zip(qini[name], qini["s"], strict=True)]
            print(json.dumps({"learner": name, "offer": offer, "qini_auc_folds": np.round(values, 4).tolist(),
                              "qini_auc": fold_interval(values), "gap_to_s": fold_interval(gap), **machine}))
    table = policy_values(data, LogsConfig(folds=args.folds, learners=tuple(n for n in learners if n != "s"),
                                                    seed=settings.seed))
    print(table.round(4).to_string())
    print(json.dumps({"best_fixed": table.attrs["best_fixed"], "seconds": round(time.perf_counter() - started, 1),
                      **machine}))


if __name__ == "__main__":
    main()
