"""The retraining pipeline: ingest -> build features -> apply -> materialise -> train challengers -> evaluate
-> promote.

Each step records its completion in `<home>/retrain/state.json` under a run id; a rerun of the same run
resumes after the last completed step. Steps that fail leave the last good state serving: ingest and
feature builds swap complete new sets in or change nothing, and no challenger is promoted before the
gate that judges it:

- the models the NBA policy uses (conversion, uplift, send time, churn), when the data is simulated: the
  policy gate. `evaluate` replays the policy with the champions and with the challengers in their place
  over the same fresh simulated period, and estimates both off-policy from the same logged decisions;
  `promote` makes the challengers champions together only if their policy earns more incremental revenue
  under the truth, without a rule broken. Holdout metrics are recorded next to it, not decisive: a better
  AUC or Qini does not always make better decisions.
- every other model, and every model on real data (no truth to replay): the holdout gate, at training:
  promoted only if it beats its champion on the same holdout (training/registry.py).

A running service picks up new champions on its next registry refresh (or at once via its /reload endpoint).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.settings import Settings

__all__ = ["STEPS", "POLICY_MODELS", "RetrainConfig", "retrain", "load_state"]

STEPS: tuple[str, ...] = ("ingest", "build", "apply", "materialize", "train", "evaluate", "promote")
POLICY_MODELS: tuple[str, ...] = ("conversion", "uplift", "send_time", "churn")  # what the NBA policy reads


@dataclass(frozen=True)
class RetrainConfig:
    source: Path | None = None  # folder of <table>.csv/.parquet, or a mapping YAML; None = keep the current raw data
    trials: int = 5  # Optuna trials per LightGBM model
    evaluate: bool = True  # judge the policy models by the policy's value when the data is simulated (a truth exists)
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


def _ingest(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from features.ingest import ingest, load_plan, manifest, plan_from_dir

    if config.source is None:
        return {"snapshot_id": manifest(settings.raw_dir)["snapshot_id"], "ingested": False}
    plan = load_plan(config.source) if config.source.suffix in (".yaml", ".yml") else plan_from_dir(config.source)
    rows = ingest(plan, settings.raw_dir)
    return {"snapshot_id": manifest(settings.raw_dir)["snapshot_id"], "rows": rows}


def _build(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from features.build import BuildConfig, build_all
    from features.contract import TABLES
    from features.ingest import read_raw
    from features.store import write_tables

    raw = {t: read_raw(settings.raw_dir, t) for t in TABLES}
    return {"rows": write_tables(build_all(raw, BuildConfig(seed=settings.seed)), settings.feature_dir)}


def _apply(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from features.store import apply

    return {"views": [v.name for v in apply(settings).list_feature_views()]}


def _materialize(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from features.store import materialize

    return {"users": materialize(settings)}


def _policy_gated(settings: Settings, config: RetrainConfig) -> tuple[str, ...]:
    """The models whose promotion waits for the policy gate: those the policy uses, when a truth can judge it."""
    return POLICY_MODELS if config.evaluate and (settings.truth_dir / "truth.json").exists() else ()


def _train(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from training.jobs import MODELS, TrainConfig, train_models

    names = list(config.models or MODELS)
    results = train_models(settings, names, TrainConfig(trials=config.trials, seed=settings.seed),
                           defer=_policy_gated(settings, config))
    return {"models": {r.name: {"version": str(r.version), "promoted": bool(r.decision.get("promoted")),
                               "reason": str(r.decision.get("reason", "")), "deferred": bool(r.decision.get("deferred")),
                               **({"better_on_holdout": bool(r.decision["better_on_holdout"])}
                                  if "better_on_holdout" in r.decision else {})} for r in results}}


def _evaluate(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    if not _policy_gated(settings, config):
        return {"skipped": "no simulated truth to replay: each model was judged on its holdout when trained"}
    from pipelines.evaluate import champion_set, judge_model_sets

    waiting = {name: m["version"] for name, m in state["steps"]["train"]["models"].items() if m.get("deferred")}
    sets = {"champions": champion_set(settings)}
    if waiting:
        sets["challengers"] = champion_set(settings, waiting)
    table = judge_model_sets(settings, sets)
    out: dict = {"challengers": waiting, "policies": table.drop(columns="versions").round(4).to_dict("index")}
    if waiting:
        champ, chall = (table.loc[k] for k in ("champions", "challengers"))
        better = bool(chall["incremental_revenue"] > champ["incremental_revenue"]) and chall["violations"] == 0
        out["decision"] = {
            "promoted": better,
            "reason": (f"simulated incremental revenue {chall['incremental_revenue']:,.0f} with the challengers vs "
                       f"{champ['incremental_revenue']:,.0f} with the champions over the same period "
                       f"(DR off-policy {chall['dr']:.4f} vs {champ['dr']:.4f}; violations {int(chall['violations'])})"),
            "challenger_revenue": float(chall["incremental_revenue"]), "champion_revenue": float(champ["incremental_revenue"]),
        }
    return out


def _promote(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from training.registry import policy_gate

    evaluated = state["steps"].get("evaluate", {})
    if not evaluated.get("decision"):
        return {"promoted": {}}
    changed = policy_gate(settings, evaluated["challengers"], evaluated["decision"])
    return {"promoted": {name: new for name, (_, new) in changed.items()}}


_RUN: dict[str, Callable[[Settings, RetrainConfig, dict], dict]] = {
    "ingest": _ingest, "build": _build, "apply": _apply, "materialize": _materialize, "train": _train,
    "evaluate": _evaluate, "promote": _promote,
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
            result = _RUN[step](settings, config, state)
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
