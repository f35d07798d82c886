"""Off-policy evaluation on a company's own contact log: what each uplift learner's policy, and each fixed policy,
would have earned, estimated honestly out of sample. Works on the tables alone (no simulator).

- Actions: the logged (offer, channel) pairs and "no contact" (the control rows).
- Propensities: the logged `propensity` when every row has one, else each action's share of the log (a
  randomised experiment: assignment does not depend on the user).
- Reward: converted within the label's window (`UpliftConfig.window_days`), the uplift label itself: a
  conversion after the window is no reward, as it is no label.
- Cross-fitting: users are split into folds; each fold's decisions are judged by a policy (and a DR reward
  model) fitted on the other folds only, so no decision judges a model that trained on it.
- A learner's policy sends each user the action of the highest predicted uplift when it is positive, else
  nothing. Fixed policies: everyone the same action, and nobody.

Limitation: the policy may pick an action the logging policy could not take for that user (an offer the user
was not eligible for); such users get no credit, so with per-user eligibility in the log the estimate of a model
policy is conservative.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from nextbest.training.datasets import TrainingSet
from nextbest.training.ope import doubly_robust, dr_terms, paired_difference, snips
from nextbest.training.tabular import FitConfig
from nextbest.training.uplift import (
    ENGAGE_COLUMNS,
    OFFER_COLUMNS,
    UpliftConfig,
    fit_learner,
    fit_t_learner,
    user_folds,
)

__all__ = ["LogsConfig", "NO_CONTACT", "logged_actions", "policy_values"]

NO_CONTACT = "no contact"


@dataclass(frozen=True)
class LogsConfig:
    """Folds, learners whose policies are judged, and the (untuned) fit of every model."""

    folds: int = 3
    learners: tuple[str, ...] = ("t", "x", "dr")
    rounds: int = 100  # boosting rounds per model (default parameters: judging, not tuning)
    min_rows: int = 10  # an action a policy may take is logged at least this often outside each fold
    seed: int = 7


def logged_actions(frame: pd.DataFrame, treatment: str = "treated") -> tuple[np.ndarray, np.ndarray]:
    """Each row's logged action ("offer @ channel", or NO_CONTACT) and its probability under the logging policy."""
    treated = frame[treatment].to_numpy() == 1
    action = np.where(treated, frame["offer_id"].astype(str) + " @ " + frame["channel"].astype(str), NO_CONTACT)
    if "propensity" in frame and frame["propensity"].notna().all() and (frame["propensity"] > 0).all():
        return action.astype(object), frame["propensity"].to_numpy(dtype="float64")
    share = pd.Series(action).value_counts(normalize=True)
    return action.astype(object), share.reindex(action).to_numpy()


def policy_values(data: TrainingSet, config: LogsConfig = LogsConfig()) -> pd.DataFrame:
    """SNIPS and DR estimates (95 % intervals) of each learner's policy and each fixed policy, cross-fitted; one row
    per policy, with `matched` (logged decisions where the policy takes the logged action) and the DR difference
    from the best fixed policy, paired on the same decisions."""
    if "label" not in data.frame or data.treatment is None:
        raise ValueError("off-policy evaluation needs the uplift rows: contacted and control rows with a label")
    frame = data.frame.reset_index(drop=True)
    action, propensity = logged_actions(frame, data.treatment)
    if NO_CONTACT not in set(action) or set(action) == {NO_CONTACT}:
        raise ValueError("off-policy evaluation needs contacted rows and a control group (variant `control`) in the log")
    reward = frame["label"].to_numpy(dtype="float64")
    users = frame["user_id"].astype(str).to_numpy() if "user_id" in frame else np.arange(len(frame)).astype(str)
    folds = user_folds(users, config.folds, config.seed)
    # The actions a policy may take: those logged often enough outside every fold for a model to know them. Rarer
    # ones stay in the log as decisions no policy repeats.
    per_fold = pd.crosstab(action, folds)  # actions x folds
    outside = per_fold.to_numpy().sum(axis=1, keepdims=True) - per_fold.to_numpy()
    actions = sorted(a for a, n in zip(per_fold.index, outside.min(axis=1), strict=True)
                     if a != NO_CONTACT and n >= config.min_rows)
    if not actions:
        raise ValueError(f"no contacted action is logged {config.min_rows}+ times outside every fold: too few "
                         "decisions to judge a policy (fewer --folds, or more users)")
    fit_cfg = UpliftConfig(fit=FitConfig(trials=1, max_rounds=config.rounds, seed=config.seed), seed=config.seed)
    names = [*config.learners, *(f"everyone: {a}" for a in actions), f"nobody ({NO_CONTACT})"]
    chosen = {name: np.empty(len(frame), dtype=object) for name in names}
    q = np.zeros((len(frame), len(actions) + 1))  # the DR reward model, per action (last: no contact)
    for k in range(config.folds):
        test = folds == k
        train = replace(data, frame=frame[~test].reset_index(drop=True))
        grid = _action_rows(frame[test].reset_index(drop=True), train.frame, actions, data.treatment, config.seed + k)
        arms = fit_t_learner(train, fit_cfg)
        q[test, :-1] = arms.treated_.predict(grid).reshape(len(actions), -1).T
        q[test, -1] = arms.control_.predict(frame[test])
        for learner in config.learners:
            try:
                model = fit_learner(learner, train, fit_cfg)
            except ValueError as err:
                raise ValueError(f"learner {learner}: {err}") from None
            uplift = np.asarray(model.predict(grid), dtype="float64").reshape(len(actions), -1).T
            best = uplift.argmax(axis=1)
            chosen[learner][test] = np.where(uplift.max(axis=1) > 0, np.asarray(actions, dtype=object)[best], NO_CONTACT)
        for a in actions:
            chosen[f"everyone: {a}"][test] = a
        chosen[f"nobody ({NO_CONTACT})"][test] = NO_CONTACT
    index = {a: i for i, a in enumerate(actions)} | {NO_CONTACT: len(actions)}
    # A rare logged action no policy takes: its reward model is the contacted average (it only enters DR's
    # correction, weighted by 0 for every policy here).
    q_logged = np.where(np.isin(action, actions) | (action == NO_CONTACT),
                        q[np.arange(len(frame)), [index.get(a, 0) for a in action]], q[:, :-1].mean(axis=1))
    rows, terms = [], {}
    for name in names:
        pick = chosen[name]
        target = (pick == action).astype("float64")
        q_target = q[np.arange(len(frame)), [index[a] for a in pick]]
        terms[name] = dr_terms(propensity, target, reward, q_logged, q_target)
        s = snips(propensity, target, reward) if target.any() else None
        dr = doubly_robust(propensity, target, reward, q_logged, q_target)
        rows.append({"policy": name, "kind": "learner" if name in config.learners else "fixed",
                     "snips": s.value if s else np.nan, "snips_low": s.low if s else np.nan,
                     "snips_high": s.high if s else np.nan, "dr": dr.value, "dr_low": dr.low, "dr_high": dr.high,
                     "matched": int(target.sum()), "contacted_share": float((pick != NO_CONTACT).mean())})
    table = pd.DataFrame(rows).set_index("policy")
    fixed = table[table["kind"] == "fixed"]
    best_fixed = fixed["dr"].idxmax()
    for name in names:
        diff = paired_difference(terms[name], terms[best_fixed])
        table.loc[name, ["vs_best_fixed", "vs_best_fixed_low", "vs_best_fixed_high"]] = diff.value, diff.low, diff.high
    table.attrs["best_fixed"] = best_fixed
    table.attrs["logged"] = len(frame)
    table.attrs["chosen"] = chosen  # each policy's action per logged row
    return table


def _action_rows(rows: pd.DataFrame, train: pd.DataFrame, actions: list[str], treatment: str,
                 seed: int) -> pd.DataFrame:
    """`rows` once per action (action-major), each copy with that action's request columns: the offer's
    attributes and channel from the training rows that logged it, a send hour drawn from them."""
    rng = np.random.default_rng(seed)
    sent = train[train[treatment].to_numpy() == 1]
    logged = (sent["offer_id"].astype(str) + " @ " + sent["channel"].astype(str)).to_numpy()
    parts = []
    for a in actions:
        examples = sent[logged == a]
        pick = examples.iloc[rng.integers(0, len(examples), len(rows))]
        request = pick[list(OFFER_COLUMNS + ENGAGE_COLUMNS)].reset_index(drop=True)
        parts.append(rows.drop(columns=list(request.columns)).join(request))
    return pd.concat(parts, ignore_index=True)
