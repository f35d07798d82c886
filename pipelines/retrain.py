"""The retraining pipeline: ingest -> build features -> apply -> materialise -> train challengers -> evaluate
-> promote.

Each step records its completion in `<home>/retrain/state.json` under a run id; a rerun of the same run
resumes after the last completed step. Steps that fail leave the last good state serving: ingest and
feature builds swap complete new sets in or change nothing, and no challenger is promoted before the
gate that judges it:

- the models the NBA policy uses (conversion, uplift, send time, churn): the policy gate. `evaluate` judges
  the policy with the champions and the policy with all the challengers in their place on the same
  evidence, and `promote` makes the challengers champions together only if their policy is worth more:
  on simulated data, by the truth's incremental revenue over the same replayed period (no rule broken);
  on a company's own data, by the doubly robust off-policy estimate on the decisions logged since the
  newest holdout began (none of the challengers trained on them), by the estimator of `nextbest evaluate --logs`
  (`pipelines.offpolicy.judge_choices`: reward in the label's window, DR's reward model cross-fitted over users). When too few logged decisions match
  a policy's choice for the estimate to mean anything, each challenger falls back to its holdout.
  Holdout metrics are recorded next to it, not decisive: a better AUC or Qini does not always make
  better decisions.
- every other model: the holdout gate, at training: promoted only if it beats its champion on the same
  holdout (training/registry.py). `RetrainConfig(evaluate=False)` puts every model on the holdout gate.

A running service picks up new champions on its next registry refresh (or at once via its /reload endpoint).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nextbest.features.settings import Settings

__all__ = ["STEPS", "POLICY_MODELS", "RetrainConfig", "retrain", "load_state", "gate_decision", "ARGMAX_SUFFIX"]

STEPS: tuple[str, ...] = ("ingest", "build", "apply", "materialize", "train", "evaluate", "promote")
POLICY_MODELS: tuple[str, ...] = ("conversion", "uplift", "send_time", "churn")  # what the NBA policy reads
ARGMAX_SUFFIX = " (argmax)"  # the gate's label of a model set's raw-argmax twin (`evaluate.raw_argmax`), not a candidate


@dataclass(frozen=True)
class RetrainConfig:
    source: Path | None = None  # folder of <table>.csv/.parquet, or a mapping YAML; None = keep the current raw data
    trials: int = 5  # Optuna trials per LightGBM model
    evaluate: bool = True  # judge the policy models by the policy's value when the data is simulated (a truth exists)
    models: tuple[str, ...] | None = None  # models to retrain (None = training/jobs.py DEFAULT_MODELS; () = features only)
    min_matched: int = 200  # off-policy gate: logged decisions matching each policy's choice, at least
    uplift_learner: str = "auto"  # auto (training.uplift.pick_learner) or s, t, x, dr, funnel
    uplift_shrinkage: bool | None = None  # the uplift policy's shrinkage: None = automatic (training/uplift.py UpliftConfig)
    uplift_arm_fits: dict[str, int] | None = None  # the funnel's seeded fits per arm (UpliftConfig.arm_fits); None = default
    logs: bool = True  # fold the decision service's logs (<home>/logs) into the contacts table at ingest
    logs_cutoff: datetime | None = None  # decisions and outcomes logged from then on wait for the next run (None = now)
    assume_utc: bool = False  # ingest: timestamps without an offset are UTC (unless the mapping gives the table a zone)


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
    from nextbest.features.ingest import ingest, ingest_window, load_plan, manifest, plan_from_dir
    from nextbest.pipelines.logs_to_contacts import fold_logs

    out: dict = {"ingested": False}
    if config.source is not None:
        allowed = [settings.data_dir] if settings.data_dir else []
        plan = load_plan(config.source, allowed) if config.source.suffix in (".yaml", ".yml") else plan_from_dir(config.source)
        out = {"rows": ingest(plan, settings.raw_dir, assume_utc=config.assume_utc,
                              window=ingest_window(settings.ingest_past_years, settings.ingest_future_days))}
    if config.logs:  # the decision service's own decisions and outcomes join the contact log
        out["logs"] = fold_logs(settings, config.logs_cutoff)
    return {"snapshot_id": manifest(settings.raw_dir)["snapshot_id"], **out}


def _build(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from nextbest.features.build import BuildConfig, build_features

    return {"rows": build_features(settings, BuildConfig(seed=settings.seed))}


def _apply(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from nextbest.features.store import apply

    return {"views": [v.name for v in apply(settings).list_feature_views()]}


def _materialize(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from nextbest.features.store import materialize

    return {"users": materialize(settings)}


def _policy_gated(config: RetrainConfig) -> tuple[str, ...]:
    """The models whose promotion waits for the policy gate: those the policy uses (all when `evaluate`)."""
    return POLICY_MODELS if config.evaluate else ()


def _train(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from nextbest.training.jobs import (
        DEFAULT_MODELS,
        ON_DISK,
        TrainConfig,
        read_raw_tables,
        skipped_models,
        train_models,
    )

    names = list(DEFAULT_MODELS if config.models is None else config.models)
    skipped = skipped_models(read_raw_tables(settings, ON_DISK), names) if names else {}
    names = [n for n in names if n not in skipped]  # a company without a contact log still trains the others
    if not names:  # features only: the champions stay
        return {"models": {}, "skipped": skipped}
    results = train_models(settings, names, TrainConfig(trials=config.trials, seed=settings.seed,
                                                        sample_rows=settings.train_sample_rows,
                                                        uplift_learner=config.uplift_learner,
                                                        uplift_shrinkage=config.uplift_shrinkage,
                                                        uplift_arm_fits=config.uplift_arm_fits),
                           defer=_policy_gated(config), skip=skipped.__setitem__)
    keep = ("better_on_holdout", "holdout_from", "holdout_split")
    return {"models": {r.name: {"version": str(r.version), "promoted": bool(r.decision.get("promoted")),
                               "reason": str(r.decision.get("reason", "")), "deferred": bool(r.decision.get("deferred")),
                               **{k: r.decision[k] for k in keep if k in r.decision}} for r in results},
            "skipped": skipped}


def _evaluate(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    """Judge the waiting challengers together by the policy they make, against the champions' policy.

    Simulated data: by the truth's incremental revenue over the same replayed period (no rule broken).
    A company's own data: by the doubly robust off-policy estimate on the decisions logged since the newest
    holdout began (decisions none of the challengers trained on); with too few of them
    where a policy takes the logged action (`min_matched`), the estimate is too thin and each challenger falls back to
    its holdout comparison.
    """
    if not _policy_gated(config):
        return {"skipped": "evaluate is off: each model was judged on its holdout when trained"}
    import pandas as pd

    from nextbest.pipelines.evaluate import champion_set, judge_model_sets

    trained = state["steps"]["train"]["models"]
    waiting = {name: m["version"] for name, m in trained.items() if m.get("deferred")}
    sets = {"champions": champion_set(settings)}
    if waiting:
        sets["challengers"] = champion_set(settings, waiting)
    since = max((pd.Timestamp(trained[n]["holdout_from"]) for n in waiting if trained[n].get("holdout_from")), default=None)
    if since is not None and since.tzinfo is None:
        since = since.tz_localize("UTC")
    problem = ""
    try:
        table = judge_model_sets(settings, sets, since=since)
    except ValueError as err:  # nothing to estimate from: no logged decisions, no propensities or no outcomes
        table, problem = None, str(err)
    out: dict = {"challengers": waiting}
    if table is not None:
        out["policies"] = table.drop(columns="versions").round(4).to_dict("index")
    if not waiting:
        return out
    out["decision"] = gate_decision(table, waiting, trained, since, config.min_matched, problem)
    return out


def gate_decision(table, waiting: dict[str, str], trained: dict[str, dict], since, min_matched: int,
                  problem: str = "") -> dict:
    """The policy gate's verdict from `judge_model_sets`' table (None when it could not be computed: `problem`
    says why): by the simulation when there is a truth, else by the paired DR difference when enough logged
    decisions match each policy and none of them trained a challenger, else by each challenger's holdout.

    Promoted only what is surely better: by the simulation, the challengers' revenue minus the champions' paired per
    user (`revenue_diff`) with its whole 95 % interval above 0 and no rule broken; off-policy, the paired DR
    difference's interval above 0. A higher figure within the sample's noise keeps the champions."""
    import pandas as pd

    champ, chall = (table.loc[k] for k in ("champions", "challengers")) if table is not None else (None, None)
    # A contact-log model split at random (e.g. one send time in an experiment export) trained on decisions from
    # `since` on: judging it on them would be in sample, so its holdout judges it instead.
    trained_on_them = [n for n in waiting if trained[n].get("holdout_split") == "stratified"]
    if table is not None and pd.notna(chall["incremental_revenue"]):
        low = chall.get("revenue_diff_low", float("nan"))
        surely = low > 0 if pd.notna(low) else chall["incremental_revenue"] > champ["incremental_revenue"]
        better = bool(surely and chall["violations"] == 0)
        paired = (f"; difference {chall['revenue_diff']:+,.1f} [{low:+,.1f}, {chall['revenue_diff_high']:+,.1f}] paired "
                  f"per user, {'surely better' if surely else 'not surely better'}" if pd.notna(low) else "")
        reason = (f"simulated incremental revenue {chall['incremental_revenue']:,.0f} with the challengers vs "
                  f"{champ['incremental_revenue']:,.0f} with the champions over the same period{paired} "
                  f"(DR off-policy {chall['dr']:.4f} vs {champ['dr']:.4f}; violations {int(chall['violations'])})")
        decision = {"promoted": better, "by": "simulation", "reason": reason, "promote": waiting if better else {},
                    "challenger_revenue": float(chall["incremental_revenue"]),
                    "champion_revenue": float(champ["incremental_revenue"])}
    elif table is not None and min(champ["matched"], chall["matched"]) >= min_matched and not trained_on_them:
        better = bool(chall["dr_diff_low"] > 0)  # the paired interval above 0, not a noise-level difference
        reason = (f"DR off-policy value {chall['dr']:.4f} with the challengers vs {champ['dr']:.4f} with the champions: "
                  f"difference {chall['dr_diff']:+.4f} [{chall['dr_diff_low']:+.4f}, {chall['dr_diff_high']:+.4f}] "
                  f"paired on {int(chall['logged']):,} decisions logged since {since}")
        decision = {"promoted": better, "by": "off-policy", "reason": reason, "promote": waiting if better else {},
                    "challenger_dr": float(chall["dr"]), "champion_dr": float(champ["dr"]),
                    "dr_difference": [float(chall[k]) for k in ("dr_diff", "dr_diff_low", "dr_diff_high")]}
    else:
        thin = (f"the holdout of {', '.join(trained_on_them)} is not a time split: the decisions logged since "
                f"{since} include rows they trained on" if table is not None and trained_on_them else
                f"only {int(min(champ['matched'], chall['matched']))} logged decisions match a policy's choice (fewer than "
                f"{min_matched})" if table is not None else problem)
        better = {n: v for n, v in waiting.items() if trained[n].get("better_on_holdout")}
        decision = {"promoted": bool(better), "by": "holdout", "promote": better,
                    "reason": f"{thin}: each challenger judged on its holdout"}
    return decision


def _promote(settings: Settings, config: RetrainConfig, state: dict) -> dict:
    from nextbest.training.registry import policy_gate

    evaluated = state["steps"].get("evaluate", {})
    decision = evaluated.get("decision")
    if not decision:
        return {"promoted": {}}
    from nextbest.monitoring.monitor import promotion_block

    blocked = promotion_block(settings)
    if blocked:
        return {"promoted": {}, "refused": blocked}
    changed = policy_gate(settings, evaluated["challengers"], decision["promote"], decision)
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
