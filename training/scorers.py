"""Trained models as serving uses them: safe-format files, the encoder, the contract, the compiled scorer.

Training writes these (training/tabular.py, uplift.py, send_time.py fit them); serving reads them through
training/registry.py. This module imports no fitting code (no Optuna, no scikit-learn). Each scorer has two
ways to score:
- `predict(frame)`: from a DataFrame of features and request columns (training, evaluation, notebooks);
- `compile(feature_columns)`: the same model bound to the columns its FeatureService serves, scoring `Rows`
  (user index, offer x channel cell, hour) by array indexing, one predict call per model, one thread
  (serving/engine.py). Both give the same scores (tests/test_compiled.py, on real trained champions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch
from torch import nn

from nextbest.training.compiled import ContractError, InputPlan, Rows
from nextbest.training.customer_base import SUMMARY_COLUMNS
from nextbest.training.encoding import FrameEncoder
from nextbest.training.nets import device, load_state, predict_net, save_net

__all__ = [
    "MODEL_FORMAT",
    "REQUEST_COLUMNS",
    "BoosterScorer",
    "StagedBooster",
    "later_stage",
    "LinearScorer",
    "BlendScorer",
    "UpliftScorer",
    "EffectScorer",
    "SLearnerScorer",
    "FunnelUpliftScorer",
    "SendTimeNet",
    "SendTimeScorer",
    "hour_share",
    "rhythm_inputs",
    "cluster_prior",
    "cluster_posterior",
    "rhythm_columns",
    "send_columns",
    "send_names",
    "RHYTHM_INPUTS",
    "ContractError",
    "CompiledBooster",
    "input_columns",
]

# The newest format of the saved files this code reads, stamped into each registered model's meta.json ("format",
# `registry.save_scorer`) and checked before loading (`registry.load_scorer`): a model saved in a newer format is
# refused with a message, never read in part. Raise it when a saved model gains files or meanings that older code
# would skip silently. 1 (no field): every model saved before the field; 2: any booster arm may be the mean of
# several fits (`{stem}.1.txt`, ... beside `{stem}.txt`: `AveragedBooster`, `UpliftConfig.arm_fits`), the pooled
# after-click arm included; code older than the control arm's averaging read only such an arm's first fit.
MODEL_FORMAT = 2

# Columns a caller passes next to the features, per model (they describe the action, not the user): the one
# list training builds its frames with and serving builds its requests from.
REQUEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "conversion": ("offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour"),
    "uplift": ("offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour"),
    "offer_net": ("offer_id", "offer_category", "offer_kind", "offer_value", "channel", "local_hour"),
    "channel": ("channel",),
    "send_time": ("channel", "local_hour"),
    "churn": (),
    "purchase": (),
}
_SHARES = [f"open_share_h{h:02d}" for h in range(24)]
_RHYTHM = [*_SHARES, "rhythm_events_365d"]  # one list object: `UserColumns.matrix` caches by identity


def send_names(bins: int) -> tuple[list[str], list[str]]:
    """The time profile's past sends and opens per bin of local send hours (`sends_hXX_365d`, `opens_hXX_365d`, XX
    the bin's first hour; features/build.py `SEND_HOUR_BINS`), for `bins` bins over the day."""
    starts = range(0, 24, 24 // bins)
    return [f"sends_h{b:02d}_365d" for b in starts], [f"opens_h{b:02d}_365d" for b in starts]


class CompiledBooster:
    """A LightGBM model bound to its input plan: one single-threaded predict over all rows."""

    def __init__(self, scorer: BoosterScorer, feature_columns: Sequence[str], request: Sequence[str]):
        self.plan = InputPlan(scorer.encoder_, feature_columns, request)
        self.booster = scorer.booster_

    def predict(self, x: Rows) -> np.ndarray:
        return self.predict_codes(self.plan.codes(x))

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        """The model's scores of its encoded input matrix (`plan.codes`): the predict work alone."""
        # One thread: LightGBM's default pool costs milliseconds per call on a busy 2-core machine (STACK.md).
        return self.booster.predict(codes, num_threads=1)


class BoosterScorer:
    """P(label) from a LightGBM text model; string features are encoded with the stored category lists."""

    kind = "lightgbm"

    def __init__(self, booster: lgb.Booster, encoder: FrameEncoder, feature_service: str, params: dict | None = None):
        self.booster_ = booster
        self.encoder_ = encoder
        self.feature_service = feature_service
        self.params_ = dict(params or {})

    @property
    def inputs(self) -> list[str]:
        return list(self.encoder_.columns)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster_.predict(self.encoder_.codes(frame))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> CompiledBooster:
        return CompiledBooster(self, feature_columns, request)

    def importance(self) -> dict[str, float]:
        gains = self.booster_.feature_importance(importance_type="gain")
        return {c: float(g) for c, g in zip(self.encoder_.columns, gains, strict=True)}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.txt").write_text(self.booster_.model_to_string())
        (folder / "encoder.json").write_text(json.dumps(self.encoder_.to_json()))
        (folder / "meta.json").write_text(json.dumps({"kind": self.kind, "feature_service": self.feature_service,
                                                      "params": self.params_}, default=str))

    @classmethod
    def load(cls, folder: Path) -> BoosterScorer:
        meta = json.loads((folder / "meta.json").read_text())
        booster = lgb.Booster(model_str=(folder / "model.txt").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / "encoder.json").read_text()))
        return cls(booster, encoder, meta["feature_service"], meta.get("params"))



class AveragedBooster(BoosterScorer):
    """The mean of several LightGBM models' probabilities, all fitted on the same rows and columns (one encoder) with
    different seeds: one arm's fit-to-fit noise averaged out (a funnel arm fitted `UpliftConfig.arm_fits` times).
    `booster_` is the first fit (what reads one booster: the model card); `boosters_` all of them. Fits with one
    input more than the encoder's columns are a `StagedBooster`'s (the pooled after-click arm): each predicts the later
    stage, as that scorer does."""

    kind = "lightgbm_mean"

    def __init__(self, boosters: Sequence[lgb.Booster], encoder: FrameEncoder, feature_service: str,
                 params: dict | None = None):
        if not boosters:
            raise ValueError("an averaged arm needs at least one booster")
        super().__init__(boosters[0], encoder, feature_service, {**(params or {}), "fits": len(boosters)})
        self.boosters_ = list(boosters)
        self.staged = staged_booster(boosters[0], encoder)

    def predict_codes(self, codes: np.ndarray, threads: int = 0) -> np.ndarray:
        codes = later_stage(codes) if self.staged else codes
        return np.mean([b.predict(codes, num_threads=threads) for b in self.boosters_], axis=0)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_codes(self.encoder_.codes(frame))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> CompiledAveraged:
        return CompiledAveraged(self, feature_columns, request)

    def importance(self) -> dict[str, float]:
        gains = np.mean([b.feature_importance(importance_type="gain") for b in self.boosters_], axis=0)
        named = {c: float(g) for c, g in zip(self.encoder_.columns, gains[:-1] if self.staged else gains, strict=True)}
        return {**named, StagedBooster.STAGE_INPUT: float(gains[-1])} if self.staged else named

    def save(self, folder: Path) -> None:
        super().save(folder)  # the first fit as `model.txt`, the others beside it
        write_other_fits(folder, "model", self)

    @classmethod
    def load(cls, folder: Path) -> AveragedBooster:
        first = BoosterScorer.load(folder)
        return cls([first.booster_, *read_other_fits(folder, "model")], first.encoder_, first.feature_service,
                   first.params_)


def staged_booster(booster: lgb.Booster, encoder: FrameEncoder) -> bool:
    """Whether a booster was fitted on two stages of a funnel (`fit_booster(stage=...)`): one input more than its
    encoder's columns, the stage, which a `StagedBooster` sets to the later stage."""
    return booster.num_feature() == len(encoder.columns) + 1


def write_other_fits(folder: Path, stem: str, model: BoosterScorer) -> None:
    """An averaged arm's fits after its first (`{stem}.txt`) as `{stem}.1.txt`, `{stem}.2.txt`, ...; nothing for
    any other booster."""
    for i, booster in enumerate(getattr(model, "boosters_", [])[1:], start=1):
        (folder / f"{stem}.{i}.txt").write_text(booster.model_to_string())


def read_other_fits(folder: Path, stem: str) -> list[lgb.Booster]:
    """The fits `write_other_fits` wrote beside `{stem}.txt`, in order ([] for a single booster)."""
    others: list[lgb.Booster] = []
    while (path := folder / f"{stem}.{len(others) + 1}.txt").exists():
        others.append(lgb.Booster(model_str=path.read_text()))
    return others


class CompiledAveraged(CompiledBooster):
    """An averaged arm bound to its input plan: one code matrix, one single-threaded predict per fit, their mean."""

    def __init__(self, scorer: AveragedBooster, feature_columns: Sequence[str], request: Sequence[str]):
        super().__init__(scorer, feature_columns, request)
        self.scorer = scorer

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.scorer.predict_codes(codes, threads=1)


class LinearScorer:
    """P(label) from a regularised logistic regression over the encoder's dense input (standardised numbers,
    missing -> the mean, one-hot strings): the linear candidate learner, chosen when it cross-validates better."""

    kind = "logistic"

    def __init__(self, coef: np.ndarray, intercept: float, encoder: FrameEncoder, feature_service: str,
                 params: dict | None = None):
        self.coef_ = np.asarray(coef, dtype="float64")
        self.intercept_ = float(intercept)
        self.encoder_ = encoder
        self.feature_service = feature_service
        self.params_ = dict(params or {})

    @property
    def inputs(self) -> list[str]:
        return list(self.encoder_.columns)

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        """Probabilities from the encoder's `codes` matrix (both scoring paths end here)."""
        z = self.encoder_.dense_codes(codes) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_codes(self.encoder_.codes(frame))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> CompiledLinear:
        return CompiledLinear(self, feature_columns, request)

    def importance(self) -> dict[str, float]:
        """|coefficient| per input column (summed over a string column's one-hot cells)."""
        enc, out, start = self.encoder_, {}, len(self.encoder_.numeric)
        out.update({c: float(abs(w)) for c, w in zip(enc.numeric, self.coef_[:start], strict=True)})
        for c in enc.categorical:
            width = len(enc.categories[c])
            out[c] = float(np.abs(self.coef_[start:start + width]).sum())
            start += width
        return out

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "linear.json").write_text(json.dumps({"coef": self.coef_.tolist(), "intercept": self.intercept_}))
        (folder / "encoder.json").write_text(json.dumps(self.encoder_.to_json()))
        (folder / "meta.json").write_text(json.dumps({"kind": self.kind, "feature_service": self.feature_service,
                                                      "params": self.params_}, default=str))

    @classmethod
    def load(cls, folder: Path) -> LinearScorer:
        meta = json.loads((folder / "meta.json").read_text())
        weights = json.loads((folder / "linear.json").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / "encoder.json").read_text()))
        return cls(np.array(weights["coef"]), weights["intercept"], encoder, meta["feature_service"], meta.get("params"))


class CompiledLinear:
    """A logistic regression bound to its input plan: the same codes as the LightGBM path, then one matrix product."""

    def __init__(self, scorer: LinearScorer, feature_columns: Sequence[str], request: Sequence[str]):
        self.plan = InputPlan(scorer.encoder_, feature_columns, request)
        self.scorer = scorer

    def predict(self, x: Rows) -> np.ndarray:
        return self.scorer.predict_codes(self.plan.codes(x))


class BlendScorer:
    """The mean of a LightGBM model's and a logistic regression's probabilities, both fitted on the same rows and
    columns (one encoder): a candidate learner that is chosen when it cross-validates better than either alone."""

    kind = "blend"

    def __init__(self, booster: BoosterScorer, linear: LinearScorer):
        self.booster_ = booster
        self.linear_ = linear
        self.encoder_ = booster.encoder_
        self.feature_service = booster.feature_service
        self.params_ = {**booster.params_, "learner": "blend", "C": linear.params_.get("C")}

    @property
    def inputs(self) -> list[str]:
        return list(self.encoder_.columns)

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        return 0.5 * (self.booster_.booster_.predict(codes, num_threads=1) + self.linear_.predict_codes(codes))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_codes(self.encoder_.codes(frame))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> CompiledBlend:
        return CompiledBlend(self, feature_columns, request)

    def importance(self) -> dict[str, float]:
        return self.booster_.importance()

    def save(self, folder: Path) -> None:
        self.booster_.save(folder)
        (folder / "linear.json").write_text(json.dumps({"coef": self.linear_.coef_.tolist(),
                                                        "intercept": self.linear_.intercept_}))
        (folder / "meta.json").write_text(json.dumps({"kind": self.kind, "feature_service": self.feature_service,
                                                      "params": self.params_}, default=str))

    @classmethod
    def load(cls, folder: Path) -> BlendScorer:
        booster = BoosterScorer.load(folder)
        booster.params_ = {k: v for k, v in booster.params_.items() if k not in ("learner", "C")}
        weights = json.loads((folder / "linear.json").read_text())
        c = json.loads((folder / "meta.json").read_text()).get("params", {}).get("C")
        linear = LinearScorer(np.array(weights["coef"]), weights["intercept"], booster.encoder_, booster.feature_service,
                              {"learner": "logistic", "C": c})
        return cls(booster, linear)


class CompiledBlend:
    """A blend bound to its input plan: one code matrix, one LightGBM predict, one matrix product."""

    def __init__(self, scorer: BlendScorer, feature_columns: Sequence[str], request: Sequence[str]):
        self.plan = InputPlan(scorer.encoder_, feature_columns, request)
        self.scorer = scorer

    def predict(self, x: Rows) -> np.ndarray:
        return self.scorer.predict_codes(self.plan.codes(x))


class EffectScorer(BoosterScorer):
    """Uplift straight from one LightGBM regression on pseudo-outcomes (the X- and doubly robust learners):
    `predict` is the effect itself; `learner` says which learner fitted it."""

    kind = "uplift_effect"


# What "no action" leaves empty in an S-learner's input: the action's columns and the matched features keyed by them
# (the send hour stays: it is the time of the decision, contacted or not).
S_ACTION_COLUMNS: tuple[str, ...] = ("offer_id", "offer_category", "offer_kind", "offer_value", "channel")
_S_ACTION_MATCHED: tuple[str, ...] = ("offer_affinity", "offer_affinity_rel", "channel_open_rate", "channel_click_rate",
                                      "channel_convert_rate", "channel_sent_7d", "channel_sent_90d",
                                      "channel_days_since_contact")


class SLearnerScorer(BoosterScorer):
    """S-learner: one LightGBM over the user's features and the action (control rows: no action); the uplift of an
    action is the model with it minus the model with the action's columns empty, as on the control rows."""

    kind = "uplift_s_learner"

    @property
    def empty_columns(self) -> np.ndarray:
        """Positions in the encoder's columns that "no action" leaves missing (NaN, as the encoder codes None)."""
        return np.array([j for j, c in enumerate(self.encoder_.columns) if c in S_ACTION_COLUMNS + _S_ACTION_MATCHED],
                        dtype="int64")

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return s_learner_uplift(self.booster_, self.encoder_.codes(frame), self.empty_columns)

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> _CompiledSLearner:
        return _CompiledSLearner(self, feature_columns, request)


def s_learner_uplift(booster: lgb.Booster, codes: np.ndarray, empty: np.ndarray, threads: int = 0) -> np.ndarray:
    """One predict over the rows with their action and the same rows with none: the difference."""
    held = codes.copy()
    held[:, empty] = np.nan
    both = booster.predict(np.vstack([codes, held]), num_threads=threads)
    return both[: len(codes)] - both[len(codes):]


class UpliftScorer:
    """Incremental conversion probability: the treated arm's score minus the control arm's."""

    kind = "uplift_t_learner"

    def __init__(self, treated: BoosterScorer, control: BoosterScorer, feature_service: str):
        self.treated_ = treated
        self.control_ = control
        self.feature_service = feature_service
        self.params_ = {f"treated_{k}": v for k, v in treated.params_.items()} | {f"control_{k}": v for k, v in control.params_.items()}

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.treated_.predict(frame) - self.control_.predict(frame)

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> _CompiledTLearner:
        return _CompiledTLearner(self.treated_.compile(feature_columns, request), self.control_.compile(feature_columns, request))

    def importance(self) -> dict[str, float]:
        return self.treated_.importance()

    def save(self, folder: Path) -> None:
        _save_arms(folder, {"treated": self.treated_, "control": self.control_}, self.kind, self.feature_service)

    @classmethod
    def load(cls, folder: Path) -> UpliftScorer:
        arms, service = _load_arms(folder, ("treated", "control"))
        return cls(*arms, service)


class StagedBooster(BoosterScorer):
    """A booster fitted on the rows of two stages of a funnel at once (`fit_booster(stage=...)`): the stage, 0 or 1,
    is one more input after the encoder's columns, and the scorer predicts the later stage (1).

    The funnel uplift's after-click arm is one (`training/uplift.py fit_funnel`): P(convert | opened, clicked or not,
    offer) on every opened row, predicted as clicked. The clicked rows are a few; the opened rows left unclicked
    (three times as many) convert only organically, and teach the trees each user's organic level, which the clicked
    rows then leave by the offer's effect."""

    kind = "lightgbm_staged"
    # The stage input's name in `importance`: not a column name (a space and parentheses), so it never overwrites the
    # gain of a feature of the same name (the uplift service has a user feature `funnel_stage`).
    STAGE_INPUT = "(stage input: clicked)"

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster_.predict(later_stage(self.encoder_.codes(frame)))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> CompiledBooster:
        return _CompiledStaged(self, feature_columns, request)

    def importance(self) -> dict[str, float]:
        gains = self.booster_.feature_importance(importance_type="gain")
        return {**{c: float(g) for c, g in zip(self.encoder_.columns, gains[:-1], strict=True)},
                self.STAGE_INPUT: float(gains[-1])}


def later_stage(codes: np.ndarray) -> np.ndarray:
    """An encoder's matrix with the stage column (1: the later stage) appended, as a `StagedBooster` reads it."""
    return np.column_stack([codes, np.ones(len(codes))])


class _CompiledStaged(CompiledBooster):
    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.booster.predict(later_stage(codes), num_threads=1)


class FunnelUpliftScorer:
    """Uplift through the funnel: P(open | user, channel, hour) x (P(convert | opened, offer) - P(convert | control)),
    where P(convert | opened, offer) = P(click | opened, offer) x P(convert | clicked, offer) + (1 - P(click |
    opened, offer)) x P(convert | control) when the log tracks clicks (an opened message left unclicked changes
    nothing)."""

    kind = "uplift_funnel"
    arms = ("engage", "convert", "control")  # what `arm` answers
    _fitted = ("engage", "click", "convert", "control")  # what is stored; "click" may be None

    def __init__(self, engage: BoosterScorer, convert: BoosterScorer, control: BoosterScorer, feature_service: str,
                 click: BoosterScorer | None = None):
        self.engage_ = engage
        self.click_ = click
        self.convert_ = convert  # P(convert | clicked) with a click arm, else P(convert | opened)
        self.control_ = control
        self.feature_service = feature_service
        self.params_ = {f"{arm}_{k}": v for arm in self._fitted if getattr(self, f"{arm}_") is not None
                        for k, v in getattr(self, f"{arm}_").params_.items()}

    def arm(self, name: str, frame: pd.DataFrame) -> np.ndarray:
        """One stage's probability per row: "engage" P(open), "convert" P(convert | opened), "control" P(convert)."""
        if name not in self.arms:
            raise ValueError(f"unknown arm {name!r}; choose from {', '.join(self.arms)}")
        if name == "convert":
            control = self.arm("control", frame)
            return self.lift(frame, control) + control
        return np.asarray(getattr(self, f"{name}_").predict(frame), dtype=float)

    def lift(self, frame: pd.DataFrame, control: np.ndarray | None = None) -> np.ndarray:
        """P(convert | opened, offer) - P(convert | not contacted) per row; `control` is the latter when known."""
        control = self.arm("control", frame) if control is None else control
        converted = np.asarray(self.convert_.predict(frame), dtype=float)
        if self.click_ is None:
            return converted - control
        # An opened message left unclicked changes nothing: only the clicks lift conversion.
        return np.asarray(self.click_.predict(frame), dtype=float) * (converted - control)

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> _CompiledFunnel:
        arms = {arm: getattr(self, f"{arm}_").compile(feature_columns, request) for arm in self._fitted
                if getattr(self, f"{arm}_") is not None}
        return _CompiledFunnel(arms)

    def parts(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(open), P(convert | opened) and P(convert | not contacted) per row."""
        return tuple(self.arm(a, frame) for a in self.arms)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.arm("engage", frame) * self.lift(frame)

    def importance(self) -> dict[str, float]:
        return self.convert_.importance()

    def save(self, folder: Path) -> None:
        _save_arms(folder, {arm: getattr(self, f"{arm}_") for arm in self._fitted if getattr(self, f"{arm}_") is not None},
                   self.kind, self.feature_service)

    @classmethod
    def load(cls, folder: Path) -> FunnelUpliftScorer:
        names = tuple(a for a in cls._fitted if (folder / f"{a}_model.txt").exists())  # models saved before clicks: 3 arms
        arms, service = _load_arms(folder, names)
        fitted = dict(zip(names, arms, strict=True))
        return cls(fitted["engage"], fitted["convert"], fitted["control"], service, click=fitted.get("click"))


def _save_arms(folder: Path, arms: dict[str, BoosterScorer], kind: str, service: str) -> None:
    """Each arm as a LightGBM text model plus its encoder JSON, and the scorer's kind and FeatureService."""
    folder.mkdir(parents=True, exist_ok=True)
    for arm, model in arms.items():
        (folder / f"{arm}_model.txt").write_text(model.booster_.model_to_string())
        (folder / f"{arm}_encoder.json").write_text(json.dumps(model.encoder_.to_json()))
        write_other_fits(folder, f"{arm}_model", model)  # an averaged arm's other fits (the same encoder)
    (folder / "meta.json").write_text(json.dumps({"kind": kind, "feature_service": service}))


def _load_arms(folder: Path, names: tuple[str, ...]) -> tuple[list[BoosterScorer], str]:
    """The arms written by `_save_arms`, in `names` order, and the FeatureService."""
    service = json.loads((folder / "meta.json").read_text())["feature_service"]
    arms = []
    for arm in names:
        booster = lgb.Booster(model_str=(folder / f"{arm}_model.txt").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / f"{arm}_encoder.json").read_text()))
        others = read_other_fits(folder, f"{arm}_model")  # an averaged arm's other fits
        if others:  # an averaged arm, staged or not (`AveragedBooster.staged`)
            arms.append(AveragedBooster([booster, *others], encoder, service))
            continue
        # One input more than the encoder's columns: the stage of a StagedBooster.
        kind = StagedBooster if staged_booster(booster, encoder) else BoosterScorer
        arms.append(kind(booster, encoder, service))
    return arms, service


class SendTimeNet(nn.Module):
    """User tower + channel embedding, the user's rhythm at the hour and the channel's hour -> logit.

    `rhythm` > 0 (models trained since issue 16): the logit is a sum, head(user, channel) + rhythm(the `rhythm`
    columns of `rhythm_inputs` at the hour) + a bias per (channel, hour), as the hour enters the simulator's truth
    (a bump around the user's peak hour, the same on every channel). The best hour is then the rhythm's plus the
    channel's hour bias, and the user tower cannot move it: with the hour inside the head (the older form, kept
    for models saved before, `rhythm` 0 with the raw share as its one column) the net chose hours 0.4-0.5 h further
    from the user's peak than the activity shares themselves (benchmarks/RESULTS.md, issue 16).
    """

    def __init__(self, width: int, channels: int, hidden: int = 64, rhythm: int = 0):
        super().__init__()
        self.user = nn.Sequential(nn.Linear(width, hidden), nn.ReLU())
        self.channel = nn.Embedding(channels + 1, 8)  # index 0 = unknown channel
        self.rhythm = nn.Sequential(nn.Linear(rhythm, 16), nn.ReLU(), nn.Linear(16, 1)) if rhythm else None
        if self.rhythm is None:
            self.hour = nn.Embedding(24, 8)
            self.head = nn.Sequential(nn.Linear(hidden + 16 + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.hour = nn.Embedding((channels + 1) * 24, 1)  # the (channel, hour) bias
            nn.init.zeros_(self.hour.weight)
            self.head = nn.Sequential(nn.Linear(hidden + 8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, channel: torch.Tensor, hour: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        return self.logit(self.user(x), channel, hour, share)

    def logit(self, user: torch.Tensor, channel: torch.Tensor, hour: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """The head over the user tower's output: `forward` after the tower (the factorised scorer enters here)."""
        if self.rhythm is None:
            z = torch.cat([user, self.channel(channel), self.hour(hour), share[:, None]], dim=1)
            return self.head(z).squeeze(1)
        z = torch.cat([user, self.channel(channel)], dim=1)
        return (self.head(z) + self.rhythm(share)).squeeze(1)


def hour_share(frame: pd.DataFrame, hours: np.ndarray) -> np.ndarray:
    """The user's share of app opens at each row's local hour (1/24 when the time profile is missing)."""
    if not all(c in frame for c in _SHARES):
        return np.full(len(frame), 1 / 24, dtype="float32")
    shares = frame[_SHARES].to_numpy(dtype="float64", na_value=1 / 24)
    return shares[np.arange(len(frame)), hours].astype("float32")


RHYTHM_INPUTS = 2  # columns of `rhythm_inputs`


def rhythm_inputs(shares: np.ndarray, events: np.ndarray, hours: np.ndarray, prior: np.ndarray,
                  strength: float, rows: np.ndarray | None = None, clusters: np.ndarray | None = None,
                  weights: np.ndarray | None = None, sends: np.ndarray | None = None, opens: np.ndarray | None = None,
                  curves: np.ndarray | None = None) -> np.ndarray:
    """(n, 2) float32 per row: log(24 x rhythm share at the row's hour) and that share over the user's peak share.

    `shares` (U, 24) are each user's smoothed activity shares per local hour and `events` how many events they
    rest on (NaN: unknown); row i reads user `rows[i]` (default: row i is user i) at `hours[i]`. The shares are
    shrunk towards the population's shares `prior` with the weight of `strength` events. Without it a user with
    no activity had a flat profile (1/24 everywhere, so the first allowed hour) and one with three events a profile
    of three bumps: 8 % of the demo's (user, channel) pairs have no activity and 22 % fewer than 11 events, where
    most of the send-time loss was (benchmarks/RESULTS.md, issue 16). The shrunk share is a posterior mean; its log
    and its ratio to the peak follow the truth's shape of a rhythm (a logit bump around the user's peak hour) more
    closely than the share itself.

    `clusters` (K, 24) and `weights` (K) (models trained since the ninth session): the prior is each user's own, the
    population's daily profiles (`send_time.rhythm_clusters`) weighted by how well each explains the user's events
    (`cluster_prior`), in place of the one population profile: a user with an event or two at 8:00 is shrunk towards
    the morning profile, not towards the population's mix, whose evening peak can outweigh them. `sends`, `opens`
    (U, B) and `curves` (K, B) (models trained since the tenth session): the user's past sends and opens per bin of
    local send hours also weigh the profiles (`cluster_posterior`), the only rhythm evidence of a user without events.
    """
    n_ev = np.nan_to_num(np.asarray(events, dtype="float64"), nan=0.0).clip(0.0, None)[:, None]
    own = np.where(np.isnan(shares), prior[None, :], shares)
    base = prior[None, :] if clusters is None else cluster_prior(own, n_ev[:, 0], clusters, weights, sends, opens, curves)
    shrunk = (own * n_ev + strength * base) / (n_ev + strength)  # per user, then gathered per row
    rows = np.arange(len(hours)) if rows is None else rows
    at = shrunk[rows, hours]
    peak = shrunk.max(axis=1, initial=0.0)[rows]
    floor = 1e-4  # a share can be 0 after smoothing only far from every event; log(0) would be -inf
    return np.stack([np.log(24 * np.maximum(at, floor)), np.divide(at, peak, out=np.zeros_like(at), where=peak > 0)],
                    axis=1).astype("float32")


def cluster_prior(shares: np.ndarray, events: np.ndarray, clusters: np.ndarray, weights: np.ndarray | None,
                  sends: np.ndarray | None = None, opens: np.ndarray | None = None,
                  curves: np.ndarray | None = None) -> np.ndarray:
    """(U, 24): each user's prior over their daily rhythm, the mixture of the population's profiles `clusters`
    (K, 24) weighted by the posterior of each given the user's events: log P(k | user) = log weight_k + events x
    sum_h share_h log profile_k(h), a multinomial likelihood of the user's (smoothed) activity per hour. A user
    without events gets the mixture at its weights (the population's profile), unless their past sends say more
    (`cluster_posterior`'s `sends`, `opens` and `curves`)."""
    return cluster_posterior(shares, events, clusters, weights, sends, opens, curves) @ clusters


def cluster_posterior(shares: np.ndarray, events: np.ndarray, clusters: np.ndarray,
                      weights: np.ndarray | None, sends: np.ndarray | None = None, opens: np.ndarray | None = None,
                      curves: np.ndarray | None = None) -> np.ndarray:
    """(U, K): P(profile k | the user's activity), `cluster_prior`'s weights and the E-step of the mixture's fit
    (`send_time.rhythm_clusters`); `weights` None: equal.

    With `curves` (K, B), each profile's P(open) of a send in each of B bins of local send hours
    (`send_time.rhythm_open_curves`), and the user's past `sends` (U, B) and `opens` (U, B) per bin: the posterior
    also multiplies in the likelihood of each send's open or no-open at its hour, prod_b r_kb^opens (1 - r_kb)^(sends
    - opens). A send reaches a user near their active hours far more often, so a user with no events but ten sends,
    one opened at 8:00, leans to the morning profile. NaN counts (columns not served) are no sends."""
    k = len(clusters)
    weights = np.full(k, 1 / k) if weights is None else np.asarray(weights, dtype="float64")
    log_q = np.log(np.maximum(np.asarray(clusters, dtype="float64"), 1e-6))
    loglik = np.nan_to_num(events, nan=0.0)[:, None] * (shares @ log_q.T) + np.log(np.maximum(weights, 1e-12))[None, :]
    if curves is not None and sends is not None and opens is not None:
        r = np.clip(np.asarray(curves, dtype="float64"), 1e-3, 1 - 1e-3)
        n = np.nan_to_num(np.asarray(sends, dtype="float64"), nan=0.0).clip(0.0, None)
        o = np.minimum(np.nan_to_num(np.asarray(opens, dtype="float64"), nan=0.0).clip(0.0, None), n)
        loglik = loglik + o @ np.log(r).T + (n - o) @ np.log1p(-r).T
    loglik -= loglik.max(axis=1, keepdims=True)
    post = np.exp(loglik)
    return post / post.sum(axis=1, keepdims=True)


class SendTimeScorer:
    """P(open) for (user features, channel, local_hour) rows, vectorised.

    `rhythm_prior` (24 shares, learned at fit: the population's activity per local hour) and `rhythm_strength`
    turn the user's activity shares into `rhythm_inputs`; None for models trained before them (the raw share).
    `rhythm_clusters` (K, 24) and `rhythm_weights` (K): the population's daily profiles each user's prior mixes
    (`cluster_prior`); None for models trained before them (the one profile `rhythm_prior`). `rhythm_open_curves`
    (K, B): each profile's P(open) per bin of local send hours, by which the user's past sends and opens
    (`send_columns`) also weigh the profiles; None for models trained before them, or on features without them.
    """

    kind = "send_time_net"

    def __init__(self, net: SendTimeNet, encoder: FrameEncoder, channels: tuple[str, ...], feature_service: str, hidden: int,
                 rhythm_prior: np.ndarray | None = None, rhythm_strength: float = 0.0,
                 rhythm_clusters: np.ndarray | None = None, rhythm_weights: np.ndarray | None = None,
                 rhythm_open_curves: np.ndarray | None = None):
        self.net_ = net
        self.encoder_ = encoder
        self.channels_ = channels
        self.feature_service = feature_service
        self.hidden_ = hidden
        self.rhythm_prior_ = None if rhythm_prior is None else np.asarray(rhythm_prior, dtype="float64")
        self.rhythm_strength_ = float(rhythm_strength)
        self.rhythm_clusters_ = None if rhythm_clusters is None else np.asarray(rhythm_clusters, dtype="float64")
        self.rhythm_weights_ = None if rhythm_weights is None else np.asarray(rhythm_weights, dtype="float64")
        self.rhythm_open_curves_ = (None if rhythm_open_curves is None or self.rhythm_clusters_ is None
                                    else np.asarray(rhythm_open_curves, dtype="float64"))
        self.params_ = {"hidden": hidden, "channels": ",".join(channels), "rhythm_strength": self.rhythm_strength_,
                        "rhythm_clusters": 0 if self.rhythm_clusters_ is None else len(self.rhythm_clusters_),
                        "rhythm_send_bins": 0 if self.rhythm_open_curves_ is None else self.rhythm_open_curves_.shape[1]}

    @property
    def send_names(self) -> tuple[list[str], list[str]]:
        """The past sends' and opens' columns the rhythm prior reads ([], [] without open curves)."""
        return ([], []) if self.rhythm_open_curves_ is None else send_names(self.rhythm_open_curves_.shape[1])

    def rhythm(self, shares: np.ndarray, events: np.ndarray, hours: np.ndarray, rows: np.ndarray | None = None,
               sends: np.ndarray | None = None, opens: np.ndarray | None = None) -> np.ndarray:
        """The net's rhythm input per row from the users' (U, 24) shares and event counts (and (U, B) past sends
        and opens per bin of send hours), row i reading user `rows[i]` (default i): one definition for `predict`
        and the compiled scorer."""
        rows = np.arange(len(hours)) if rows is None else rows
        if self.rhythm_prior_ is None:
            return np.where(np.isnan(shares), 1 / 24, shares)[rows, hours].astype("float32")
        return rhythm_inputs(shares, events, hours, self.rhythm_prior_, self.rhythm_strength_, rows,
                             self.rhythm_clusters_, self.rhythm_weights_, sends, opens, self.rhythm_open_curves_)

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        hours = pd.to_numeric(frame["local_hour"], errors="coerce").fillna(12).to_numpy().astype("int64").clip(0, 23)
        codes = pd.Index(self.channels_).get_indexer(frame["channel"].astype(str)) + 1  # unknown -> 0
        sends, opens = send_columns(frame, *self.send_names)
        return {"x": self.encoder_.dense(frame), "channel": codes.astype("int64"), "hour": hours,
                "share": self.rhythm(*rhythm_columns(frame), hours, sends=sends, opens=opens)}

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_net(self.net_, self.inputs(frame))

    def compile(self, feature_columns: Sequence[str], request: Sequence[str]) -> _CompiledSendTime:
        return _CompiledSendTime(self, feature_columns, request)

    def save(self, folder: Path) -> None:
        rhythm = None if self.rhythm_prior_ is None else {"prior": self.rhythm_prior_.tolist(),
                                                          "strength": self.rhythm_strength_}
        if rhythm is not None and self.rhythm_clusters_ is not None:
            rhythm.update(clusters=self.rhythm_clusters_.tolist(),
                          weights=None if self.rhythm_weights_ is None else self.rhythm_weights_.tolist())
            if self.rhythm_open_curves_ is not None:
                rhythm.update(open_curves=self.rhythm_open_curves_.tolist())
        save_net(self.net_, folder, {"kind": self.kind, "feature_service": self.feature_service, "hidden": self.hidden_,
                                     "channels": list(self.channels_), "rhythm": rhythm})
        (folder / "encoder.json").write_text(json.dumps(self.encoder_.to_json()))

    @classmethod
    def load(cls, folder: Path) -> SendTimeScorer:
        meta = json.loads((folder / "meta.json").read_text())
        encoder = FrameEncoder.from_json(json.loads((folder / "encoder.json").read_text()))
        rhythm = meta.get("rhythm")  # absent in models saved before the rhythm inputs
        net = SendTimeNet(encoder.dense_width, len(meta["channels"]), meta["hidden"], RHYTHM_INPUTS if rhythm else 0)
        net.load_state_dict(load_state(folder))
        net.to(device()).eval()
        return cls(net, encoder, tuple(meta["channels"]), meta["feature_service"], meta["hidden"],
                   None if rhythm is None else np.asarray(rhythm["prior"]), rhythm["strength"] if rhythm else 0.0,
                   # absent in models saved before the ninth session: the one population profile
                   None if not rhythm or rhythm.get("clusters") is None else np.asarray(rhythm["clusters"]),
                   None if not rhythm or rhythm.get("weights") is None else np.asarray(rhythm["weights"]),
                   # absent in models saved before the tenth session: the prior reads the events alone
                   None if not rhythm or rhythm.get("open_curves") is None else np.asarray(rhythm["open_curves"]))


def rhythm_columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The user's (n, 24) activity shares and the count of events they rest on, NaN where the frame lacks them."""
    shares = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan) if c in frame
                       else np.full(len(frame), np.nan) for c in _SHARES], axis=1)
    events = (pd.to_numeric(frame["rhythm_events_365d"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
              if "rhythm_events_365d" in frame else np.full(len(frame), np.nan))
    return shares, events


def send_columns(frame: pd.DataFrame, sends: Sequence[str], opens: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The user's (n, B) past sends and opens per bin of local send hours (columns `sends`, `opens`; a missing column
    counts no sends), or (None, None) when no columns are asked for."""
    if not sends:
        return None, None
    read = lambda names: np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)  # noqa: E731
                                   if c in frame else np.full(len(frame), np.nan) for c in names], axis=1)
    return read(sends), read(opens)


class _CompiledTLearner:
    def __init__(self, treated: CompiledBooster, control: CompiledBooster):
        self.treated, self.control = treated, control

    def predict(self, x: Rows) -> np.ndarray:
        return self.treated.predict(x) - self.control.predict(x)


class _CompiledSLearner:
    """`SLearnerScorer` over `Rows`: the same codes, the action's columns emptied for the "no action" half."""

    def __init__(self, scorer: SLearnerScorer, feature_columns: Sequence[str], request: Sequence[str]):
        self.plan = InputPlan(scorer.encoder_, feature_columns, request)
        self.booster, self.empty = scorer.booster_, scorer.empty_columns

    def predict(self, x: Rows) -> np.ndarray:
        return s_learner_uplift(self.booster, self.plan.codes(x), self.empty, threads=1)


class _CompiledFunnel:
    """`FunnelUpliftScorer` over `Rows`: the same arms, stages and formulas."""

    arms = FunnelUpliftScorer.arms

    def __init__(self, fitted: dict[str, CompiledBooster]):
        self.fitted = fitted

    def arm(self, name: str, x: Rows) -> np.ndarray:
        if name not in self.arms:
            raise ValueError(f"unknown arm {name!r}; choose from {', '.join(self.arms)}")
        if name == "convert":
            control = self.arm("control", x)
            return self.lift(x, control) + control
        return np.asarray(self.fitted[name].predict(x), dtype=float)

    def lift(self, x: Rows, control: np.ndarray | None = None) -> np.ndarray:
        control = self.arm("control", x) if control is None else control
        converted = np.asarray(self.fitted["convert"].predict(x), dtype=float)
        if "click" not in self.fitted:
            return converted - control
        return np.asarray(self.fitted["click"].predict(x), dtype=float) * (converted - control)

    def predict(self, x: Rows) -> np.ndarray:
        return self.arm("engage", x) * self.lift(x)


class _CompiledSendTime:
    """`SendTimeScorer` over `Rows`: the encoder's dense input, channel and hour codes, the user's hour share.

    The tower's first layer is linear, so over the dense input [user columns; per-row columns] its output is
    W_u.u + W_r.r + b: the user part (~200 columns) is computed once per user and gathered per row, and only the
    few per-row columns (the features matched to the row's channel and hour) are built for each user x channel x
    hour row. Same function as `SendTimeScorer.predict`, summed in another order: equal within float32 rounding
    (tests/test_fast_scoring.py), not bit for bit.
    """

    _CHUNK = 65_536  # rows per forward pass, as `predict_net`: bounds memory for large batches

    def __init__(self, scorer: SendTimeScorer, feature_columns: Sequence[str], request: Sequence[str]):
        if "channel" not in request or "local_hour" not in request:
            raise ContractError("the send-time model needs the request columns channel and local_hour")
        self.plan = InputPlan(scorer.encoder_, feature_columns, request)
        self.net = scorer.net_
        self.channels = scorer.channels_
        self.scorer = scorer
        # The shares and their event count when the FeatureService serves them, else NaN columns (the prior's).
        served = set(feature_columns)
        wanted = _RHYTHM if scorer.rhythm_open_curves_ is None else [*_RHYTHM, *scorer.send_names[0], *scorer.send_names[1]]
        self.rhythm_names = wanted if all(c in served for c in wanted) else [c if c in served else f"{c} (not served)"
                                                                             for c in wanted]
        self._grid_key: int | None = None
        self._channel_codes = np.zeros(0, dtype="int64")
        enc = scorer.encoder_
        self.row_names = [enc.columns[j] for j in self.plan.row_columns]
        # Factorised only when the tower starts with a Linear layer and every per-row column is a number (a per-row
        # one-hot column would need its own embedding): otherwise the full dense input, as before.
        first = self.net.user[0] if isinstance(self.net.user, nn.Sequential) else None
        self.factored = isinstance(first, nn.Linear) and all(c in enc.means for c in self.row_names)
        if self.factored:
            dense_at = [enc.numeric.index(c) for c in self.row_names]  # numbers come first in the dense layout
            self.w_rows = first.weight.detach()[:, dense_at].T.contiguous()  # (k, hidden)

    def inputs(self, x: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Channel code (unknown -> 0, as SendTimeScorer.inputs), hour and the user's share of opens at it, per row."""
        if self._grid_key != id(x.grid):
            index = {c: i for i, c in enumerate(self.channels)}
            self._channel_codes = np.array([index.get(str(c), -1) + 1 for c in x.grid.columns["channel"].tolist()],
                                           dtype="int64")
            self._grid_key = id(x.grid)
        hours = np.where(np.isnan(x.hours), 12, x.hours).astype("int64").clip(0, 23)
        rhythm = x.users.matrix(self.rhythm_names)  # (U, 25 [+ 2 B]): per user once, gathered per row inside
        bins = (rhythm.shape[1] - 25) // 2
        sends, opens = (rhythm[:, 25:25 + bins], rhythm[:, 25 + bins:]) if bins else (None, None)
        share = self.scorer.rhythm(rhythm[:, :24], rhythm[:, 24], hours, x.rows, sends, opens)
        return self._channel_codes[x.cells], hours, share

    def predict(self, x: Rows) -> np.ndarray:
        if torch.get_num_threads() != 1:
            # One thread, as LightGBM: torch's intra-op pool costs ~10 ms per call on a busy 2-core machine for a
            # few hundred rows. Serving and scoring processes score only here, so the setting stays.
            torch.set_num_threads(1)
        if not self.factored:
            return self._predict_dense(x)
        channel, hours, share = self.inputs(x)
        enc = self.plan.encoder
        per_row = self.plan.row_codes(x)
        rows_in = np.stack([per_row[j] for j in self.plan.row_columns], axis=1) if self.row_names else \
            np.zeros((len(x), 0))
        rows_in = enc.scaled(rows_in, self.row_names).astype("float32")
        dev = self.w_rows.device
        with torch.no_grad():
            # The per-row columns are 0 in this matrix (NaN codes), so they add nothing to the user part.
            users = self.net.user[0](torch.as_tensor(enc.dense_codes(self.plan.user_codes(x.users))).to(dev))
            out = []
            for start in range(0, len(x), self._CHUNK):
                part = slice(start, start + self._CHUNK)
                pre = users[torch.as_tensor(x.rows[part]).to(dev)] + torch.as_tensor(rows_in[part]).to(dev) @ self.w_rows
                tower = self.net.user[1:](pre)
                logit = self.net.logit(tower, torch.as_tensor(channel[part]).to(dev), torch.as_tensor(hours[part]).to(dev),
                                       torch.as_tensor(share[part]).to(dev))
                out.append(torch.sigmoid(logit).cpu().numpy())
        return np.concatenate(out).astype("float64") if out else np.zeros(0)

    def _predict_dense(self, x: Rows) -> np.ndarray:
        """The full dense input per row (users x channels x hours x ~200 columns): the unfactorised reference."""
        channel, hours, share = self.inputs(x)
        inputs = {"x": self.plan.encoder.dense_codes(self.plan.codes(x)), "channel": channel, "hour": hours,
                  "share": share}
        return predict_net(self.net, inputs)


def input_columns(scorer) -> list[str]:
    """The columns a scorer's encoders read from its input (features and request columns; matched ones excluded),
    plus the hour shares the send-time model reads directly."""
    encoders = [getattr(scorer, a) for a in ("encoder_",) if getattr(scorer, a, None) is not None]
    for arm in ("treated_", "control_", "engage_", "click_", "convert_"):
        sub = getattr(scorer, arm, None)
        if sub is not None:
            encoders.append(sub.encoder_)
    out: dict[str, None] = {}
    for enc in encoders:
        out.update({c: None for c in enc.columns if c not in enc.derived})
        if enc.customer_base:  # BG/NBD's inputs are computed from the purchase-history columns
            out.update({c: None for c in SUMMARY_COLUMNS})
    if isinstance(scorer, SendTimeScorer):
        out.update({c: None for c in (_SHARES if scorer.rhythm_prior_ is None else _RHYTHM)})
        out.update({c: None for names in scorer.send_names for c in names})
    return list(out)
