"""Off-policy evaluation on a company's own contact log: what each uplift learner's policy, and each fixed policy,
would have earned, estimated honestly out of sample. Works on the tables alone (no simulator).

- Actions: the logged (offer, channel) pairs and "no contact" (the control rows).
- Propensities: the logged `propensity` when every row has one, else each action's share of the log (a
  randomised experiment: assignment does not depend on the user).
- Reward: converted within the label's window (`UpliftConfig.window_days`), the uplift label itself: a
  conversion after the window is no reward, as it is no label.
- Cross-fitting: users are split into folds; each fold's decisions are judged by a policy (and a DR reward
  model) fitted on the other folds only, so no decision judges a model that trained on it.
- A learner's policy sends each user the action of the highest shrunk uplift when it is positive, else nothing
  (`training/shrinkage.py`: each score moved toward the action's average effect in the log, by a strength chosen
  out of fold, so the policy leaves the best fixed action only for a gain that survives the noise). The pure
  argmax of the raw uplift is judged beside it ("<learner> (argmax)"). Fixed policies: everyone the same action,
  and nobody.
- One estimator (`judge_choices`) for every caller: `nextbest evaluate --logs` (learners' and fixed policies) and the
  retrain policy gate (the champions' and the challengers' policies on the decisions logged since the holdout,
  `pipelines/evaluate.py`): SNIPS, DR and IPS with 95 % intervals, DR's reward model a T-learner fitted on the
  other folds of users.

Limitation: on an exported contact table the policy may pick an action the logging policy could not take for
that user (an offer the user was not eligible for, a cap the tables do not show); such users get no credit, so with
per-user eligibility in the log the estimate of a model policy is conservative. The service's own decisions carry
their refused pairs (`refused`, from the decision log), and `logged_feasibility` closes exactly those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from nextbest.features.contract import STAGE_OF_TYPE, STAGES, offer_valid
from nextbest.serving.policy import matches
from nextbest.training.datasets import TrainingSet, outcome_within
from nextbest.training.ope import doubly_robust, dr_terms, ips, paired_difference, snips
from nextbest.training.shrinkage import (
    MARGIN_Z,
    STRENGTHS,
    average_effects,
    choose_strength,
    greedy_actions,
    shrunk,
    strength_gains,
)
from nextbest.training.tabular import FitConfig
from nextbest.training.uplift import (
    ENGAGE_COLUMNS,
    NO_CONTACT,
    OFFER_COLUMNS,
    UpliftConfig,
    action_names,
    fit_learner,
    fit_t_learner,
    logged_actions,
    user_folds,
)
from nextbest.training.uplift import action_draws as _action_draws
from nextbest.training.uplift import action_grid as _grid

__all__ = ["LogsConfig", "NO_CONTACT", "action_names", "logged_actions", "judge_choices", "policy_values",
           "decisions_since", "logged_feasibility", "frame_feasibility", "converted_within", "judged_log"]



@dataclass(frozen=True)
class LogsConfig:
    """Folds, learners whose policies are judged, and the (untuned) fit of every model."""

    folds: int = 3
    learners: tuple[str, ...] = ("t", "x", "dr")
    rounds: int = 100  # boosting rounds per model (default parameters: judging, not tuning)
    margin_z: float = MARGIN_Z  # a learner's policy leaves the best fixed action only for a gain this many std. errors above 0
    # How a strength's gain over the best fixed action is estimated (training/shrinkage.py choose_strength): "ips",
    # or "dr" (doubly robust terms from the cross-fitted reward model: lower variance on a log of many actions).
    gain: str = "ips"
    min_rows: int = 10  # an action a policy may take is logged at least this often outside each fold
    seed: int = 7


def policy_values(data: TrainingSet, config: LogsConfig = LogsConfig(),
                  feasible: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """SNIPS and DR estimates (95 % intervals) of each learner's policy and each fixed policy, cross-fitted; one row
    per policy, with `matched` (logged decisions where the policy takes the logged action) and the DR difference
    from the best fixed policy, paired on the same decisions; on each fold that reference is the fixed policy best
    on the other folds (`attrs["best_fixed_by_fold"]`), so it is not the luckiest of the fixed policies.

    `feasible` (action -> per-row mask, e.g. from `logged_feasibility`): every policy takes only actions open at the
    logged decision (a fixed policy: its action where open, else no contact), so no policy is judged on actions
    the logging policy could not take.

    A learner's policy shrinks its uplift toward each action's average effect (`training/shrinkage.py`; strength 1 is
    the raw uplift, the argmax's, which "<learner> (argmax)" shows beside it, judged once per fold): on each
    fold, by the strength whose policy gained most over strength 0 (the best fixed action) on the other folds, by
    the lower bound of that gain (`config.margin_z` standard errors); `attrs["shrinkage"]` holds per learner the
    strength chosen on all folds, the folds' strengths and each strength's bound. "<learner> (argmax)" is the same
    model's pure argmax."""
    if "label" not in data.frame or data.treatment is None:
        raise ValueError("off-policy evaluation needs the uplift rows: contacted and control rows with a label")
    frame = data.frame.reset_index(drop=True)
    action, propensity = logged_actions(frame, data.treatment)
    if NO_CONTACT not in set(action) or set(action) == {NO_CONTACT}:
        raise ValueError("off-policy evaluation needs contacted rows and a control group (variant `control`) in the log")
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
    fit_cfg = _fit_config(config)
    argmax = {learner: f"{learner} (argmax)" for learner in config.learners}
    names = [*config.learners, *argmax.values(), *(f"everyone: {a}" for a in actions), f"nobody ({NO_CONTACT})"]
    chosen = {name: np.empty(len(frame), dtype=object) for name in names}
    reward = frame[data.label].to_numpy(dtype="float64")
    # Each learner's policy at every candidate strength (training/shrinkage.py), on every fold's rows.
    by_strength = {learner: {s: np.empty(len(frame), dtype=object) for s in STRENGTHS} for learner in config.learners}
    for k in range(config.folds):
        test = folds == k
        train = replace(data, frame=frame[~test].reset_index(drop=True))
        models = {}
        for learner in config.learners:
            try:
                models[learner] = fit_learner(learner, train, fit_cfg)
            except ValueError as err:
                raise ValueError(f"learner {learner}: {err}") from None
        rows = frame[test].reset_index(drop=True)
        draws = _action_draws(train.frame, actions, data.treatment, len(rows), config.seed + k)
        uplift = {learner: np.empty((len(rows), len(actions))) for learner in config.learners}
        # Rows x actions copies of the fold's rows would not fit in memory on a large log: score them in chunks of
        # rows (each row's draws fixed above, so the chunking changes no score).
        step = max(_GRID_ROWS // max(len(actions), 1), 1)
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            grid = _grid(rows.iloc[part].reset_index(drop=True), draws, part)
            for learner, model in models.items():
                uplift[learner][part] = np.asarray(model.predict(grid), dtype="float64").reshape(len(actions), -1).T
        open_ = None if feasible is None else np.stack([feasible[a][test] for a in actions], axis=1)
        # The centers come from the other folds' outcomes only, like the models.
        center = average_effects(action[~test], propensity[~test], reward[~test], actions, NO_CONTACT)
        for learner in config.learners:
            score = uplift[learner]
            chosen[argmax[learner]][test] = greedy_actions(score, actions, NO_CONTACT, open_)
            for s in STRENGTHS:
                by_strength[learner][s][test] = greedy_actions(shrunk(score, center, s), actions,
                                                               NO_CONTACT, open_)
        for a in actions:
            chosen[f"everyone: {a}"][test] = a if feasible is None else np.where(feasible[a][test], a, NO_CONTACT)
        chosen[f"nobody ({NO_CONTACT})"][test] = NO_CONTACT
    shrinkage = {}
    strength_terms = {learner: None for learner in config.learners}
    if config.gain == "dr":  # every strength's policy judged once, by the cross-fitted reward model
        judged = judge_choices(replace(data, frame=frame), {f"{learner} @ strength {s:g}": c for learner in config.learners
                                                            for s, c in by_strength[learner].items()},
                               config, folds=folds, action=action, propensity=propensity).attrs["dr_terms"]
        strength_terms = {learner: {s: judged[f"{learner} @ strength {s:g}"] for s in STRENGTHS}
                          for learner in config.learners}
    for learner in config.learners:
        # Each fold's strength is chosen on the other folds' decisions (judged by models that never saw them; DR's
        # reward model of another fold saw this fold's outcomes, a leak of its fit only); the strength on all folds
        # is the one a model fitted on the whole log would use.
        per_fold, terms = [], strength_terms[learner]
        for k in range(config.folds):
            other = folds != k
            s, _ = choose_strength({s: c[other] for s, c in by_strength[learner].items()}, action[other],
                                   propensity[other], reward[other], config.margin_z,
                                   None if terms is None else {s: t[other] for s, t in terms.items()})
            chosen[learner][folds == k] = by_strength[learner][s][folds == k]
            per_fold.append(s)
        overall, bounds = choose_strength(by_strength[learner], action, propensity, reward, config.margin_z, terms)
        means, errors = strength_gains(by_strength[learner], action, propensity, reward, terms)
        shrinkage[learner] = {"strength": overall, "by_fold": per_fold, "gain_lower_bounds": bounds,
                              "gain_means": means, "gain_errors": errors}  # what another margin would choose
    table = judge_choices(replace(data, frame=frame), chosen, config, folds=folds, action=action, propensity=propensity)
    table.insert(0, "kind", ["learner" if name in config.learners else "argmax" if name in argmax.values() else "fixed"
                             for name in table.index])
    fixed = [name for name in names if name.startswith(("everyone: ", "nobody ("))]
    terms = table.attrs["dr_terms"]
    reference, by_fold = _best_fixed_out_of_fold(fixed, chosen, action, propensity, reward, folds, terms)
    for name in names:
        diff = paired_difference(terms[name], reference, table.attrs["users"])
        table.loc[name, ["vs_best_fixed", "vs_best_fixed_low", "vs_best_fixed_high"]] = diff.value, diff.low, diff.high
    picked = list(dict.fromkeys(by_fold))
    table.attrs["best_fixed"] = picked[0] if len(picked) == 1 else "best fixed (chosen per fold)"
    table.attrs["best_fixed_by_fold"] = by_fold
    table.attrs["shrinkage"] = shrinkage
    return table


def _best_fixed_out_of_fold(fixed: list[str], chosen: dict[str, np.ndarray], action: np.ndarray,
                            propensity: np.ndarray, reward: np.ndarray, folds: np.ndarray,
                            terms: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The reference a learner is paired against: on each fold, the fixed policy with the best IPS value on the
    other folds (outcomes the fold never sees; IPS uses no reward model, which would have seen them), judged by its
    DR terms on the fold. The best of ~60 fixed policies picked on the same decisions it is judged on is the luckiest
    of them: at 1,000 users on the demo world its value came out 80 % above its true value (benchmarks/RESULTS.md)."""
    reference, by_fold = np.zeros(len(folds)), []
    for k in np.unique(folds):
        other = folds != k
        ips_value = {name: float(np.mean((chosen[name][other] == action[other]) / propensity[other] * reward[other]))
                     for name in fixed}
        best = max(fixed, key=lambda name: ips_value[name])
        reference[folds == k] = terms[best][folds == k]
        by_fold.append(best)
    return reference, by_fold


def _fit_config(config: LogsConfig) -> UpliftConfig:
    """Untuned fits of `config.rounds` rounds: judging, not tuning."""
    return UpliftConfig(fit=FitConfig(trials=1, max_rounds=config.rounds, seed=config.seed), seed=config.seed)


def judge_choices(data: TrainingSet, chosen: dict[str, np.ndarray], config: LogsConfig = LogsConfig(),
                  folds: np.ndarray | None = None, action: np.ndarray | None = None,
                  propensity: np.ndarray | None = None) -> pd.DataFrame:
    """SNIPS, DR and IPS (95 % intervals) of policies given as each logged row's chosen action (`action_names`
    spelling), on the logged rows of `data` (reward: its label, the conversion within the label's window).

    DR's reward model is cross-fitted: per fold of users (`folds`, else `config.folds` seeded folds), a T-learner
    fitted on the other folds predicts the fold's reward of the logged action and of each policy's action.
    Intervals are clustered by user when the rows name one (`user_id`): one user's rewards are correlated. Returns
    one row per policy with `matched` (rows where it takes the logged action), `contacted_share`, the per-row
    standard errors beside the clustered ones (`<method>_se_rows`, `<method>_se`) and `clusters`; the per-row
    DR terms (for paired differences) in `attrs["dr_terms"]`, the rows' users in `attrs["users"]` (None without),
    the choices in `attrs["chosen"]`.
    """
    frame = data.frame.reset_index(drop=True)
    if action is None or propensity is None:
        action, propensity = logged_actions(frame, data.treatment)
    users = frame["user_id"].astype(str).to_numpy() if "user_id" in frame else None
    if folds is None:
        folds = user_folds(users if users is not None else np.arange(len(frame)).astype(str), config.folds, config.seed)
    reward = frame[data.label].to_numpy(dtype="float64")
    q_logged = np.zeros(len(frame))
    q_chosen = {name: np.zeros(len(frame)) for name in chosen}
    fit_cfg = _fit_config(config)
    for k in np.unique(folds):
        test = folds == k
        train = replace(data, frame=frame[~test].reset_index(drop=True))
        q = _RewardModel(fit_t_learner(train, fit_cfg), frame[test].reset_index(drop=True), train.frame, data.treatment,
                         config.seed + int(k))
        asked = [action[test], *(np.asarray(pick, dtype=object)[test] for pick in chosen.values())]
        q.prepare(asked)
        q_logged[test] = q.of(asked[0])
        for name, picks in zip(chosen, asked[1:], strict=True):
            q_chosen[name][test] = q.of(picks)
    out, terms = [], {}
    for name, pick in chosen.items():
        target = (np.asarray(pick, dtype=object) == action).astype("float64")
        terms[name] = dr_terms(propensity, target, reward, q_logged, q_chosen[name])
        s = snips(propensity, target, reward, users) if target.any() else None
        i = ips(propensity, target, reward, users)
        dr = doubly_robust(propensity, target, reward, q_logged, q_chosen[name], users)
        row = {"policy": name, "snips": s.value if s else np.nan, "snips_low": s.low if s else np.nan,
               "snips_high": s.high if s else np.nan, "dr": dr.value, "dr_low": dr.low, "dr_high": dr.high,
               "ips": i.value, "ips_low": i.low, "ips_high": i.high, "effective_n": i.effective_n,
               "matched": int(target.sum()), "contacted_share": float((np.asarray(pick) != NO_CONTACT).mean()),
               "clusters": i.clusters if i.clusters is not None else len(frame)}
        for key, e in (("ips", i), ("snips", s), ("dr", dr)):
            row[f"{key}_se"] = e.se if e else np.nan
            row[f"{key}_se_rows"] = e.se_rows if e else np.nan
        out.append(row)
    table = pd.DataFrame(out).set_index("policy")
    table.attrs.update(dr_terms=terms, chosen=chosen, logged=len(frame), users=users)
    return table


class _RewardModel:
    """A T-learner's P(convert) of each of `rows` under a given action per row: the control arm for NO_CONTACT, the
    treated arm with the action's request columns (an example of it from the training rows) for a contact. A row
    is scored with an action once, whichever policies ask, and only when one asks. An action no training row logged
    (nothing to learn it from) gets the treated arm's mean over the training contacts: no policy is credited through
    it, as no logged row takes it."""

    def __init__(self, arms, rows: pd.DataFrame, train: pd.DataFrame, treatment: str, seed: int):
        self.arms, self.rows = arms, rows
        self.sent = train[train[treatment].to_numpy() == 1]
        self.logged = action_names(self.sent["offer_id"], self.sent["channel"], np.ones(len(self.sent), bool))
        self.rng = np.random.default_rng(seed)
        self.cache: dict[str, np.ndarray] = {}
        self.draws: dict[str, np.ndarray] = {}
        self._unlogged: float | None = None

    def prepare(self, asked: list[np.ndarray]) -> None:
        """Score every (row, action) pair that `of` will be asked for with `asked` (in that order), in a few large
        predict calls: one call per action and policy made ~1,700 calls at 1,000 users of the demo world, ~0.1 s each,
        mostly pandas overhead per call (benchmarks/RESULTS.md). Each action's examples are drawn in the order `of` alone would draw them, so the
        predictions are the same."""
        need: dict[str, np.ndarray] = {}
        for picks in asked:
            for a in pd.unique(picks):
                need[a] = need[a] | (picks == a) if a in need else picks == a
        pieces = []
        for a, hit in need.items():
            if a == NO_CONTACT or not (self.logged == a).any():
                self._rows(a, hit)
                continue
            done = self.cache.setdefault(a, np.full(len(self.rows), np.nan))
            self.draws.setdefault(a, self.rng.integers(0, int((self.logged == a).sum()), len(self.rows)))
            todo = np.flatnonzero(hit & np.isnan(done))
            pieces += [(a, todo[i:i + _GRID_ROWS]) for i in range(0, len(todo), _GRID_ROWS)]
        columns = list(OFFER_COLUMNS + ENGAGE_COLUMNS)
        while pieces:
            batch, size = [], 0
            while pieces and (not batch or size + len(pieces[0][1]) <= _GRID_ROWS):
                batch.append(pieces.pop(0))
                size += len(batch[-1][1])
            frames = []
            for a, idx in batch:
                request = self.sent[self.logged == a].iloc[self.draws[a][idx]][columns].reset_index(drop=True)
                frames.append(self.rows.iloc[idx].reset_index(drop=True).drop(columns=columns).join(request))
            scores = self.arms.treated_.predict(pd.concat(frames, ignore_index=True))
            at = 0
            for a, idx in batch:
                self.cache[a][idx] = scores[at:at + len(idx)]
                at += len(idx)

    def _rows(self, a: str, need: np.ndarray) -> np.ndarray:
        """The predictions for action `a` (all rows), computed for the rows in `need` not yet scored with it."""
        done = self.cache.setdefault(a, np.full(len(self.rows), np.nan))
        todo = need & np.isnan(done)
        if not todo.any():
            return done
        if a == NO_CONTACT:
            done[todo] = self.arms.control_.predict(self.rows[todo])
        elif not (self.logged == a).any():
            if self._unlogged is None:
                self._unlogged = float(self.arms.treated_.predict(self.sent).mean()) if len(self.sent) else 0.0
            done[todo] = self._unlogged
        else:
            examples = self.sent[self.logged == a]
            # One example per row, drawn once per action for all rows: the same row asks the same question twice.
            draw = self.draws.setdefault(a, self.rng.integers(0, len(examples), len(self.rows)))
            request = examples.iloc[draw[todo]][list(OFFER_COLUMNS + ENGAGE_COLUMNS)].reset_index(drop=True)
            done[todo] = self.arms.treated_.predict(
                self.rows[todo].reset_index(drop=True).drop(columns=list(request.columns)).join(request))
        return done

    def of(self, picks: np.ndarray) -> np.ndarray:
        """Each row's predicted reward under its own action in `picks` (only those rows are scored with it)."""
        out = np.zeros(len(self.rows))
        for a in pd.unique(picks):
            hit = picks == a
            out[hit] = self._rows(a, hit)[hit]
        return out


_GRID_ROWS = 200_000  # (row, action) copies scored per call: bounds memory, large enough that per-call costs vanish


def judged_log(log: pd.DataFrame, stratify: bool = True) -> pd.DataFrame:
    """The logged decisions as the off-policy judge reads them: the sends and the hold-outs, each at its probability
    among them where the log says how the service randomised (its own rows: `no_contact_propensity` and
    `holdout_propensity`, pipelines/logs_to_contacts.py), else at its `propensity`. Only this copy changes.

    A "no action" decision is not judged: the week after it holds the sends the service made the user on the other
    days, so its purchases are not those of "no contact" (+23-32 % on the NBA's estimates, benchmarks/RESULTS.md).
    Among the sends and hold-outs, P(sent or held out) = 1 - P(no contact) + P(held out): a send weighs P(held out)'s
    complement x the policy's P(it) over that, a hold-out P(held out) over that (about 1.45, not 1 / share, for a
    user the policy would not contact).

    `stratify`: P(held out) is the held-out share among this log's decisions in the same state, "the policy would
    send" (its P(no action) < 0.5) or not, instead of the logged one. A stable per-user hold-out keeps its users
    uncontacted, so their caps never close every action: among the decisions where the policy would send, 14-15 %
    are held out against a logged 10 %, which IPS would otherwise miss (~5 % low; SNIPS divides it out)."""
    log = log.reset_index(drop=True)
    if {"no_contact_propensity", "holdout_propensity"} <= set(log):
        none = pd.to_numeric(log["no_contact_propensity"], errors="coerce").to_numpy(dtype="float64")
        held = pd.to_numeric(log["holdout_propensity"], errors="coerce").to_numpy(dtype="float64")
        known = np.isfinite(none) & np.isfinite(held) & (held < 1)
        policy_none = np.clip((none - held) / np.where(known, 1 - held, 1), 0, 1)
        is_control = (log["variant"].astype(object) == "control").to_numpy() if "variant" in log else log["channel"].isna().to_numpy()
        share = held.copy()
        if stratify and known.any():
            state = policy_none < 0.5  # the policy would send
            for s in (True, False):
                rows = known & (state == s)
                if rows.any():
                    share[rows] = is_control[rows].mean()
        sent_or_held = share + (1 - share) * (1 - policy_none)
        policy_p = pd.to_numeric(log["propensity"], errors="coerce").to_numpy(dtype="float64") / np.where(known, 1 - held, 1)
        among = np.where(is_control, share, (1 - share) * policy_p) / np.maximum(sent_or_held, 1e-12)
        log = log.assign(propensity=np.where(known, np.clip(among, 1e-12, 1.0), log["propensity"]))
    if "variant" in log:
        log = log[(log["variant"].astype(object) != "no_action").to_numpy()].reset_index(drop=True)
    return log


def converted_within(log: pd.DataFrame, window_days: int) -> np.ndarray:
    """1.0 where the contact converted within `window_days` of its send, the label's window (a later conversion is
    no reward, as it is no label), else 0.0."""
    return outcome_within(log, "converted_at", window_days).astype("float64")


def decisions_since(tables: dict[str, pd.DataFrame], snapshots: pd.Series, users: set[str] | None = None,
                    window_days: int = 7, newest: float = 0.3,
                    since: pd.Timestamp | None = None) -> tuple[pd.Timestamp, dict[str, pd.DataFrame]]:
    """The logged decisions to judge a policy on: sent from the cutoff on (the newest feature snapshot at or before
    `since`, else before the newest `newest` share of the log), of `users` when given, with their whole
    `window_days` outcome window observed. Returns the cutoff and the tables with those contacts only.

    The policy is scored on the features of the cutoff, so none of its inputs saw these decisions' outcomes
    (scored on today's features, it would pick the actions that happened to convert: +30-50 % on the demo world).
    """
    from nextbest.training.datasets import observation_end

    contacts = tables["contacts"]
    sent = pd.to_datetime(contacts["sent_at"], utc=True)
    # Training's rule for a complete outcome window (one definition): up to the contact's `observed_until` (an
    # experiment export watched after its last event) when given, else the newest event or send.
    complete = sent + pd.Timedelta(days=window_days) <= observation_end(tables, contacts)
    if not complete.any():
        raise ValueError(f"no logged decision has a complete {window_days}-day outcome window to judge a policy on")
    split = pd.Timestamp(since) if since is not None else sent[complete].quantile(1 - newest)
    snaps = pd.to_datetime(pd.Series(snapshots).drop_duplicates(), utc=True)
    cutoff = snaps[snaps <= split].max() if (snaps <= split).any() else snaps.min()
    keep = complete & (sent >= cutoff)
    if users is not None:
        keep &= contacts["user_id"].astype(str).isin(users)
    return cutoff, {**tables, "contacts": contacts[keep.to_numpy()]}


def logged_feasibility(tables: dict[str, pd.DataFrame], log: pd.DataFrame, offers: pd.DataFrame,
                       channels: list[str]) -> np.ndarray:
    """(rows, offers, channels): the actions open at each logged decision, from the company's own tables: the
    logging policy's support, the only actions a target policy can be credited with.

    A channel is open with consent (`users.consent_<channel>`) and no suppression of it or of '*' since before the
    send; an offer is open when valid then (`valid_from`/`valid_to`, optional) and its eligibility rule (optional)
    holds on the user's state just before the send (lifecycle stage from the events, days since the last purchase,
    tenure), by serving's own rule (`serving.policy.matches`).

    A decision the service logged itself (a non-null `refused`, from `logs_to_contacts`) is open exactly where the
    service's contact policy allowed it at that moment: every pair but the refused ones (caps, quiet hours, capacity
    and the rest, which the tables cannot rebuild), so a target policy never takes an action the service could not
    send.
    """
    open_ = _table_feasibility(tables, log, offers, channels)
    if "refused" not in log:
        return open_
    refused = log["refused"].reset_index(drop=True)
    logged = refused.notna().to_numpy()
    for text, rows in refused[logged].groupby(refused[logged]).groups.items():
        open_[rows.to_numpy()] = _allowed(json.loads(text), offers["offer_id"].astype(str).tolist(), channels)
    return open_


def _allowed(pairs: list, offer_ids: list[str], channels: list[str]) -> np.ndarray:
    """(offers, channels): True but where a refused (offer, channel) pair covers it (null = every offer/channel)."""
    out = np.ones((len(offer_ids), len(channels)), dtype=bool)
    o_at, c_at = {o: i for i, o in enumerate(offer_ids)}, {c: i for i, c in enumerate(channels)}
    for offer, channel in pairs:
        rows = slice(None) if offer is None else o_at.get(str(offer))
        cols = slice(None) if channel is None else c_at.get(str(channel))
        if rows is not None and cols is not None:  # a pair outside this catalog refuses nothing in it
            out[rows, cols] = False
    return out


def _table_feasibility(tables: dict[str, pd.DataFrame], log: pd.DataFrame, offers: pd.DataFrame,
                       channels: list[str]) -> np.ndarray:
    """`logged_feasibility` from the company's tables alone (consent, suppressions, validity, eligibility)."""
    users = tables["users"].assign(user_id=tables["users"]["user_id"].astype(str)).set_index("user_id")
    ids = log["user_id"].astype(str)
    at = pd.to_datetime(log["sent_at"], utc=True).reset_index(drop=True)
    consent = np.stack([users[f"consent_{c}"].reindex(ids).fillna(False).to_numpy(dtype=bool)
                        if f"consent_{c}" in users else np.zeros(len(log), dtype=bool) for c in channels], axis=1)
    sup = tables.get("suppressions")
    if sup is not None and len(sup):
        rows = pd.DataFrame({"row": np.arange(len(log)), "user_id": ids.to_numpy(), "at": at})
        hit = rows.merge(sup.assign(user_id=sup["user_id"].astype(str), channel=sup["channel"].astype(str)), on="user_id")
        hit = hit[pd.to_datetime(hit["since"], utc=True) <= hit["at"]]
        star = hit["channel"] == "*"
        consent[hit.loc[star, "row"].to_numpy()] = False
        cidx = pd.Index(channels).get_indexer(hit.loc[~star, "channel"])
        ok = cidx >= 0
        consent[hit.loc[~star, "row"].to_numpy()[ok], cidx[ok]] = False
    state = _state_before(tables["events"], ids, at)
    signup = pd.to_datetime(users["signup_at"], utc=True).reindex(ids).reset_index(drop=True)
    state["tenure_days"] = (at - signup).dt.days.to_numpy()
    state["user_id"] = ids.to_numpy()
    open_o = np.ones((len(log), len(offers)), dtype=bool)
    day = at.dt.floor("D")
    for j, offer in enumerate(offers.to_dict("records")):
        valid = np.array([offer_valid(d, offer.get("valid_from"), offer.get("valid_to")) for d in day.unique()])
        open_o[:, j] = pd.Series(valid, index=day.unique()).reindex(day).to_numpy(dtype=bool)
        rule = offer.get("eligibility")
        if isinstance(rule, str) and rule.strip():
            open_o[:, j] &= matches(rule, state)
    return open_o[:, :, None] & consent[:, None, :]


def _state_before(events: pd.DataFrame, ids: pd.Series, at: pd.Series) -> dict[str, np.ndarray]:
    """Each decision's lifecycle stage and days since the last purchase, from the events strictly before it."""
    ev = events[events["user_id"].astype(str).isin(set(ids))]
    ts = pd.to_datetime(ev["ts"], utc=True).dt.tz_localize(None).to_numpy()
    ev = pd.DataFrame({"user_id": ev["user_id"].astype(str).to_numpy(), "ts": ts,
                       "stage": ev["type"].astype(str).map(STAGE_OF_TYPE).fillna(0).to_numpy(dtype=np.int64),
                       "bought": np.where(ev["type"].astype(str).to_numpy() == "purchase", ts, np.datetime64("NaT"))})
    ev = ev.sort_values("ts", kind="stable")
    ev["stage"] = ev.groupby("user_id")["stage"].cummax()
    ev["bought"] = ev.groupby("user_id")["bought"].ffill()
    rows = pd.DataFrame({"row": np.arange(len(ids)), "user_id": ids.to_numpy(), "ts": at.dt.tz_localize(None).to_numpy()})
    state = pd.merge_asof(rows.sort_values("ts"), ev, on="ts", by="user_id", allow_exact_matches=False).sort_values("row")
    stage = state["stage"].fillna(0).to_numpy(dtype=np.int64)
    last_buy = pd.to_datetime(state["bought"], utc=True).reset_index(drop=True)
    return {"lifecycle_stage": np.asarray(STAGES, dtype=object)[stage],
            "recency_days": np.where(last_buy.isna(), 9999, (at - last_buy).dt.days.fillna(9999)).astype(np.int64)}


def frame_feasibility(tables: dict[str, pd.DataFrame], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per "offer @ channel" action, whether it was open at each of `frame`'s logged decisions (its rows matched by
    `contact_id` in `tables["contacts"]`), by `logged_feasibility`: the `feasible` that `policy_values` takes, so a
    policy judged on the log (`nextbest evaluate --logs`, benchmarks/bench_uplift.py) takes only actions the logging
    policy could have taken, as the retrain gate's do. Channels: the channels table's, else the log's."""
    contacts = tables["contacts"]
    contacts = contacts.assign(contact_id=contacts["contact_id"].astype(str)).drop_duplicates("contact_id")
    log = contacts.set_index("contact_id").loc[frame["contact_id"].astype(str)].reset_index()
    channels = (list(tables["channels"]["channel"].astype(str)) if tables.get("channels") is not None
                else sorted(contacts["channel"].dropna().astype(str).unique()))
    offers = tables["offers"].reset_index(drop=True)
    open_ = logged_feasibility(tables, log, offers, channels)
    return {f"{o} @ {c}": open_[:, i, j] for i, o in enumerate(offers["offer_id"].astype(str))
            for j, c in enumerate(channels)}
