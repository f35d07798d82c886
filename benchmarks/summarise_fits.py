"""Paired gains and retrain spread of `bench_uplift_variance.py`'s `fitsK-ARMS` recipes (issue 16, eleventh session).

Usage: python benchmarks/summarise_fits.py RUN.npz [RUN.npz ...] [--reference fits3-control] [--boot 4000]

Reads the per-user revenues the bench writes with `--per-user` (keys `RECIPE@SEED|REPLAY`; several runs on the same
home and users may be joined: each recipe at a training seed is deterministic, so a key seen twice must agree), and
prints, per recipe kind and replay seed, against the reference kind on the same training seeds:
- the paired mean gain over training seeds (its t interval over the seeds, and the interval over users of the
  per-user mean difference), the fits gaining, the worst fit;
(replay seed 0: every replay's users together, each fit's NBA the sum over the replays)
- the spread: the sd over training seeds of the NBA of each kind (its chi-square 95 % interval), and the ratio of the
  recipe's sd to the reference's with a 95 % interval from a paired bootstrap over the training seeds (the same seeds
  resampled for both: their fits share members, so the two sds are not independent).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from nextbest.training.ope import paired_difference


def load(paths: list[Path]) -> dict[tuple[str, str, int], np.ndarray]:
    """(kind, training seed, replay seed) -> per-user revenue."""
    out: dict[tuple[str, str, int], np.ndarray] = {}
    for path in paths:
        with np.load(path) as runs:
            for key in runs.files:
                name, replay = key.split("|")
                kind, _, seed = name.partition("@")
                k = (kind, seed, int(replay))
                if k in out and not np.allclose(out[k], runs[key], rtol=0, atol=1e-6):
                    raise SystemExit(f"{key} differs between runs: not the same home, users or code")
                out[k] = runs[key]
    return out


def sd_interval(values: np.ndarray) -> tuple[float, float, float]:
    n = len(values)
    sd = float(np.std(values, ddof=1))
    low = sd * np.sqrt((n - 1) / stats.chi2.ppf(0.975, n - 1))
    high = sd * np.sqrt((n - 1) / stats.chi2.ppf(0.025, n - 1))
    return sd, float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", default="fits3-control")
    parser.add_argument("--boot", type=int, default=4000)
    args = parser.parse_args()
    per_user = load(args.runs)
    replays = sorted({r for _, _, r in per_user})
    for kind, seed in {(k, s) for k, s, _ in per_user}:  # the replays together: each fit's users of every replay
        if all((kind, seed, r) in per_user for r in replays) and len(replays) > 1:
            per_user[kind, seed, 0] = np.concatenate([per_user[kind, seed, r] for r in replays])
    seeds: dict[tuple[str, int], set[str]] = defaultdict(set)
    for kind, seed, replay in per_user:
        seeds[kind, replay].add(seed)
    rng = np.random.default_rng(0)
    gains, spread = [], []
    for (kind, replay), own in sorted(seeds.items()):
        both = sorted(own & seeds.get((args.reference, replay), set()), key=int)
        if len(both) < 2:
            continue
        mine = np.array([per_user[kind, s, replay].sum() for s in both])
        ref = np.array([per_user[args.reference, s, replay].sum() for s in both])
        sd, low, high = sd_interval(mine)
        row = {"recipe": kind, "replay seed": replay, "training seeds": len(both), "NBA mean": mine.mean(),
               "sd": sd, "sd low": low, "sd high": high, "sd %": 100 * sd / mine.mean()}
        if kind != args.reference:
            draws = rng.integers(0, len(both), size=(args.boot, len(both)))
            ratio = np.std(mine[draws], axis=1, ddof=1) / np.maximum(np.std(ref[draws], axis=1, ddof=1), 1e-9)
            row.update({"sd / reference sd": sd / float(np.std(ref, ddof=1)),
                        "ratio low": float(np.quantile(ratio, 0.025)), "ratio high": float(np.quantile(ratio, 0.975))})
            diff = mine - ref
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
            users = np.mean([per_user[kind, s, replay] - per_user[args.reference, s, replay] for s in both], axis=0)
            d = paired_difference(users, np.zeros_like(users))
            n = len(users)
            gains.append({"recipe": kind, "replay seed": replay, "training seeds": len(both),
                          "reference NBA": ref.mean(), "gain": diff.mean(), "gain %": 100 * diff.mean() / ref.mean(),
                          "seeds low": diff.mean() - half, "seeds high": diff.mean() + half,
                          "users low": d.low * n, "users high": d.high * n,
                          "fits gaining": f"{int((diff > 0).sum())} / {len(diff)}", "worst": diff.min(),
                          "per seed": " / ".join(f"{x:+,.0f}" for x in diff)})
        spread.append(row)
    print(pd.DataFrame(gains).to_markdown(index=False, floatfmt=",.2f"))
    print()
    print(pd.DataFrame(spread).to_markdown(index=False, floatfmt=",.3f"))


if __name__ == "__main__":
    main()
