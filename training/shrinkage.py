"""Shrinkage of per-user uplift toward each action's average effect: the learned policy may leave the best fixed
action only where the model's estimate of the gain is strong enough to survive the noise.

A per-user argmax over noisy uplift estimates loses to the best send-everyone policy when the true heterogeneity
is small against the estimation noise (a company's e-mail experiment: its argmax policy beat "everyone offer A"
but not "everyone offer B"). So each score is moved toward the action's average effect in the log:

    shrunk(x, a) = center(a) + strength x (uplift(x, a) - center(a))

`center(a)`: the action's average effect in the log (self-normalised IPS: its logged rows' reward minus the control
rows', each weighted by 1 / propensity). Strength 0 gives every user the same ranking of actions (the best fixed
policy: the action of the highest average effect, where open, or nobody when none is positive); strength 1 is the
model's raw uplift (the per-user argmax). The form recentred on the model's own mean, center + strength x (uplift -
mean), lost 25 % against the raw argmax on 1,000 users of the demo world at strength 1 (60 actions, each center from
~130 logged rows: the noise of the centers reordered the actions); this one keeps the raw argmax among the candidates.
The strength is chosen out of sample (`choose_strength`) from the policies each strength makes
on decisions the models did not train on: the largest lower confidence bound of the gain over strength 0, so the
policy leaves the fixed one only for a gain larger than `z` standard errors.

One definition for every place that turns uplift scores into choices: `nextbest evaluate --logs` and the retrain
gate (`pipelines/offpolicy.py`), the uplift champion (its strength and centers travel with it) and serving's EV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["STRENGTHS", "MARGIN_Z", "Shrinkage", "shrunk", "average_effects", "choose_strength", "strength_gains", "pick_strength",
           "greedy_actions"]

# How many standard errors a strength's gain over the best fixed action must clear: the policy leaves the best fixed
# action only for a gain whose 95 % interval lies above 0, the same "surely better" as the promotion gates (the uplift
# holdout gate's paired Qini, the policy gate's paired revenue / DR difference). At 1.0 (before) a chance gain got
# through on about half of Thornton's 8 splits and the shrunk policy lost 0.0049 to the best fixed one on average;
# at 1.96 it is the best fixed one on 8 of 8, and the 11 generated experiment worlds keep the same strengths. The
# price: with the shrinkage forced on the demo world's 60-action log (it is off there by default), 2 of 3 samples of
# 2,000 users lose the funnel's targeting (benchmarks/RESULTS.md, issue 19, eighth session).
MARGIN_Z = 1.96

STRENGTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # candidate strengths, 0 = the best fixed policy


@dataclass(frozen=True)
class Shrinkage:
    """An uplift model's shrinkage: its strength and, per action ("offer @ channel"), the log's average effect."""

    strength: float
    center: dict[str, float]

    def apply(self, uplift: np.ndarray, actions: list[str]) -> np.ndarray:
        """`shrunk` over the last axis of `uplift`, one entry per action in `actions`; an action without a
        center (never logged) keeps its score as it is."""
        return self.apply_arrays(uplift, self.arrays(actions))

    def arrays(self, actions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per action in `actions`: whether it has a center, and its center (computed once per action list by a
        caller that applies it often)."""
        return np.array([a in self.center for a in actions], dtype=bool), np.array([self.center.get(a, 0.0) for a in actions])

    def apply_arrays(self, uplift: np.ndarray, arrays: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        known, center = arrays
        return np.where(known, shrunk(uplift, center, self.strength), uplift)

    def to_json(self) -> dict:
        return {"strength": self.strength, "center": self.center}

    @classmethod
    def from_json(cls, data: dict) -> Shrinkage:
        return cls(float(data["strength"]), {str(k): float(v) for k, v in data["center"].items()})


def shrunk(uplift: np.ndarray, center: np.ndarray, strength: float) -> np.ndarray:
    """center + strength x (uplift - center), `center` broadcast over the last axis (the actions)."""
    center = np.asarray(center, dtype="float64")
    return center + strength * (np.asarray(uplift, dtype="float64") - center)


def average_effects(action: np.ndarray, propensity: np.ndarray, reward: np.ndarray, actions: list[str],
                    control: str) -> np.ndarray:
    """Per action in `actions`, its logged rows' mean reward minus the control rows', each row weighted by
    1 / propensity (self-normalised); 0 for an action with no logged row."""
    w = 1.0 / np.asarray(propensity, dtype="float64")
    r = np.asarray(reward, dtype="float64")

    def mean_of(name: str) -> float:
        hit = action == name
        return float((w[hit] * r[hit]).sum() / w[hit].sum()) if hit.any() else np.nan

    base = mean_of(control)
    return np.array([np.nan_to_num(mean_of(a) - base) for a in actions])


def greedy_actions(score: np.ndarray, actions: list[str], none: str, open_: np.ndarray | None = None) -> np.ndarray:
    """Per row, the open action of the highest score when it is positive, else `none` (score: rows x actions)."""
    if open_ is not None:
        score = np.where(open_, score, -np.inf)
    if score.shape[1] == 0:
        return np.full(len(score), none, dtype=object)
    best = score.argmax(axis=1)
    return np.where(score.max(axis=1) > 0, np.asarray(actions, dtype=object)[best], none).astype(object)


def choose_strength(chosen: dict[float, np.ndarray], action: np.ndarray, propensity: np.ndarray, reward: np.ndarray,
                    z: float = MARGIN_Z, terms: dict[float, np.ndarray] | None = None) -> tuple[float, dict[float, float]]:
    """The strength whose policy (`chosen[strength]`: each logged row's action under it) has the largest lower
    bound, mean - z x standard error, of its gain over strength 0 on these logged decisions; 0 when no bound is
    above 0. Returns it and each strength's bound (0 for strength 0).

    The gain is paired, per decision. By IPS (no `terms`): a decision counts only where the two policies differ and
    one of them takes the logged action, so its standard error is that of the deviations alone; on a log of many
    actions few decisions match either policy and the gain is too noisy to clear the bound. With `terms` (per
    strength, each decision's doubly robust term from a reward model that did not see the decision's outcome,
    `pipelines.offpolicy.judge_choices`): every decision where the policies differ counts through the reward
    model, the logged outcome correcting it where one of them takes the logged action. The rows must be decisions the
    models that made `chosen` did not train on."""
    means, errors = strength_gains(chosen, action, propensity, reward, terms)
    bounds = {s: means[s] - z * errors[s] if s else 0.0 for s in means}
    return pick_strength(means, errors, z), bounds


def strength_gains(chosen: dict[float, np.ndarray], action: np.ndarray, propensity: np.ndarray, reward: np.ndarray,
                   terms: dict[float, np.ndarray] | None = None) -> tuple[dict[float, float], dict[float, float]]:
    """Each strength's paired gain over strength 0 (`choose_strength`'s): its mean and standard error (0, 0 for
    strength 0)."""
    w = np.asarray(reward, dtype="float64") / np.asarray(propensity, dtype="float64")
    base = chosen[0.0] == action
    means, errors = {0.0: 0.0}, {0.0: 0.0}
    for strength, pick in chosen.items():
        if strength == 0.0:
            continue
        gain = terms[strength] - terms[0.0] if terms is not None else ((pick == action).astype("float64") - base) * w
        errors[strength] = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
        means[strength] = float(gain.mean())
    return means, errors


def pick_strength(means: dict[float, float], errors: dict[float, float], z: float) -> float:
    """The strength of the largest mean gain among those whose lower bound, mean - z x standard error, is above 0;
    0 when none is (ties: the smaller strength)."""
    sure = [s for s in sorted(means) if s and means[s] - z * errors[s] > 0]
    return max(sure, key=lambda s: means[s]) if sure else 0.0
