"""Copy effects: how much each copy variant of an offer moves the response, with a known best copy.

The planted truth of copy experiments (evaluation only): a variant multiplies the click (or open/convert)
probability of a send by its lift, so an experiment's winner can be checked against `best`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CopyEffects", "copy_effects", "draw_responses"]


@dataclass(frozen=True)
class CopyEffects:
    lifts: tuple[float, ...]  # per variant, relative multiplier of the response probability (1 = neutral)

    @property
    def best(self) -> int | None:
        """Index of the true best copy, or None when all copies are equal."""
        lifts = np.asarray(self.lifts)
        return None if np.allclose(lifts, lifts[0]) else int(lifts.argmax())


def copy_effects(n_variants: int, best: int | None, lift: float) -> CopyEffects:
    """`n_variants` neutral copies, one of which (`best`) lifts the response by `lift` (0.3 = +30 %)."""
    lifts = [1.0] * n_variants
    if best is not None:
        lifts[best] = 1.0 + lift
    return CopyEffects(tuple(lifts))


def draw_responses(base: np.ndarray | float, variants: np.ndarray, effects: CopyEffects,
                   rng: np.random.Generator) -> np.ndarray:
    """Whether each send (with its copy variant) got the response, given the base probability without copy effect."""
    p = np.clip(np.asarray(base, dtype=float) * np.asarray(effects.lifts)[np.asarray(variants)], 0.0, 1.0)
    return rng.random(len(variants)) < p
