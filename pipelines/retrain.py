"""The retraining pipeline: ingest -> build features -> apply -> materialise -> train challengers -> evaluate.

Each step records its completion in `<home>/retrain/state.json` under a run id; a rerun of the same run
resumes after the last completed step. Steps that fail leave the last good state serving: ingest and
feature builds swap complete new sets in or change nothing, and the training step only promotes a
challenger that beats its champion on the same holdout (training/registry.py). A running service picks
up new champions on its next registry refresh (or at once via its /reload endpoint).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.settings import Settings

__all__ = ["STEPS", "RetrainConfig", "retrain", "load_state"]

STEPS: tuple[str, ...] = ("ingest", "build", "apply", "materialize", "train", "evaluate")


@dataclass(frozen=True)
class RetrainConfig:
    source: Path | None = None  # folder of <table>.csv/.parquet, or a mapping YAML; None = keep the current raw data
    trials: int = 5  # Optuna trials per LightGBM model
    evaluate: bool = True  # replay policies when the data is simulated (a truth exists)
    models: tuple[str, ...] | None = None  # models to retrain (None = all)


def _state_path(settings: Settings) -> Path:
    return settings.home / "retrain" / "state.json"


def load_state(settings: Settings) -> dict:
    path = _state_path(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def _save(settings: Settings, state: dict) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(path)  # atomic: a crash never leaves half a state file


def _ingest(settings: Settings, config: RetrainConfig) -> dict:
    from features.ingest import ingest, load_plan, manifest, plan_from_dir

    if config.source is None:
        return {"snapshot_id": manifest(settings.raw_dir)["snapshot_id"], "ingested": False}
    plan = load_plan(config.source) if config.source.suffix in (".yaml", ".yml") else plan_from_dir(config.source)
    rows = ingest(plan, settings.raw_dir)
    return {"snapshot_id": manifest(settings.raw_dir)["snapshot_id"], "rows": rows}


def _build(settings: Settings, config: RetrainConfig) -> dict:
    from features.build import BuildConfig, build_all
    from features.contract import TABLES
    from features.ingest import read_raw
    from features.store import write_tables

    raw = {t: read_raw(settings.raw_dir, t) for t in TABLES}
    return {"rows": write_tables(build_all(raw, BuildConfig(seed=settings.seed)), settings.feature_dir)}


def _apply(settings: Settings, config: RetrainConfig) -> dict:
    from features.store import apply

    return {"views": [v.name for v in apply(settings).list_feature_views()]}


def _materialize(settings: Settings, config: RetrainConfig) -> dict:
    from features.store import materialize

    return {"users": materialize(settings)}


def _train(settings: Settings, config: RetrainConfig) -> dict:
    from training.jobs import MODELS, TrainConfig, train_models

    names = list(config.models or MODELS)
    results = train_models(settings, names, TrainConfig(trials=config.trials, seed=settings.seed))
    return {"models": {r.name: {"version": str(r.version), "promoted": bool(r.decision.get("promoted")),
                               "reason": str(r.decision.get("reason", ""))} for r in results}}


def _evaluate(settings: Settings, config: RetrainConfig) -> dict:
    if not config.evaluate or not (settings.truth_dir / "truth.json").exists():
        return {"skipped": "no simulated truth: policies are evaluated off-policy from the logs only in simulation"}
    from pipelines.evaluate import evaluate_policies

    table, ope = evaluate_policies(settings)
    return {"policies": table["incremental_revenue"].round(2).to_dict(),
            "off_policy": ope.set_index("method")["value"].round(5).to_dict()}


_RUN: dict[str, Callable[[Settings, RetrainConfig], dict]] = {
    "ingest": _ingest, "build": _build, "apply": _apply, "materialize": _materialize, "train": _train,
    "evaluate": _evaluate,
}


def retrain(settings: Settings, config: RetrainConfig = RetrainConfig(), resume: bool = True,
            progress: Callable[[str], None] | None = None) -> dict:
    """Run the pipeline; with `resume`, continue the last unfinished run after its last completed step."""
    state = load_state(settings)
    if not (resume and state and state.get("status") != "done"):
        state = {"run_id": uuid.uuid4().hex[:12], "started_at": datetime.now(UTC).isoformat(), "steps": {},
                 "source": str(config.source) if config.source else None}
    for step in STEPS:
        if state["steps"].get(step, {}).get("status") == "done":
            continue
        if progress:
            progress(step)
        state["status"] = f"running {step}"
        _save(settings, state)
        try:
            result = _RUN[step](settings, config)
        except Exception as err:
            state["steps"][step] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                    "at": datetime.now(UTC).isoformat()}
            state["status"] = f"failed at {step}"
            _save(settings, state)
            raise
        state["steps"][step] = {"status": "done", "at": datetime.now(UTC).isoformat(), **result}
        _save(settings, state)
    state["status"] = "done"
    _save(settings, state)
    return state
