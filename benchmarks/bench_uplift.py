"""Uplift learners against the S-learner, paired on the same user folds, and their policies against the best
send-everyone policy, off-policy, on the current nextbest home's contact log.

Usage: python benchmarks/bench_uplift.py [--part qini|policy|both|nba] [--folds 3] [--users 3000]
(after `nextbest demo`, or `ingest` + `features build/apply` of a company's experiment export), or
python benchmarks/bench_uplift.py --world experiment --heterogeneity weak|strong --users 50000 --part policy
(no home needed: `experiment_world`, a randomised e-mail experiment generated in memory with its planted truth).

- qini: per learner and offer the Qini AUC per fold (scikit-uplift's normalised definition, controls scored for
  that offer), the paired gap to the S-learner (`fit_learner("s")`, the product's own) with its t-interval.
  `--qini-learners ...,auto`: also the learner `auto` chooses on each fold's training part (`choose_learner` +
  `pick_learner`, never the test fold), scored like the others (its per-fold choices printed); "highest" beside it,
  the former rule (the highest cross-fitted Qini of the same table).
  `--learners auto,...` (policy part): `auto`'s choice on the estimation half stands for "auto".
- policy: the users are split in two halves. On the estimation half, `policy_values` judges each learner's policy
  and each fixed policy (everyone one action, nobody), cross-fitted (what `nextbest evaluate --logs` prints). On
  the held-out half, the learners fitted on the whole estimation half choose, and plain IPS with the logged
  propensities gives each policy's held-out value (unbiased on a randomised log): the "held-out IPS truth" the
  cross-fitted estimates are compared with. The learners are paired there against the fixed policy with the best
  cross-fitted DR on the estimation half (chosen out of sample). On a simulated world the oracle's expected conversion of each
  policy's choices is the simulator's truth beside them (`evaluate.simulated_truths`, the truth `nextbest evaluate`
  and the retrain gate use). Policies take only actions open at each logged decision
  (`logged_feasibility`), the logging policy's support.
  `--sample k` judges the k-th of disjoint samples of `--users` users (a seeded permutation of the log's users), so
  several samples of one world are independent; `--dump PREFIX` writes each estimation-half decision (logged action,
  propensity, reward, every policy's choice and the simulator's truth of it) to PREFIX-sample<k>-est.parquet.
  Each learner's policy is the product's (uplift shrunk toward each action's average effect by the strength chosen
  on the estimation half, `training/shrinkage.py`) and, beside it, "<learner> (argmax)", the raw per-user argmax.
- --world experiment: instead of the home's log, a world shaped like a public e-mail experiment (Hillstrom's: two
  e-mails and a no-mail control, a third each, customers described by recency, spend and which departments they
  bought from; small effects). `--heterogeneity weak`: e-mail A lifts conversion by ~2.0 points and B by ~1.5 on
  average, and the better one differs by only ~0.3-0.5 points where a customer's department favours B; `strong`:
  by up to ~6 points, so targeting pays; `medium` in between (~2.4). The truth of a policy is its planted expected
  conversion.
- nba: the home's champions' NBA policy, judged as `nextbest evaluate` judges it (the decisions logged after the
  cutoff, `evaluate.off_policy`, the estimator of `evaluate --logs`), against the simulator's truth, timed.
Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings
from nextbest.features.store import feature_store
from nextbest.pipelines.cli import judged_contacts
from nextbest.pipelines.offpolicy import (
    NO_CONTACT,
    LogsConfig,
    _fit_config,
    frame_feasibility,
    judge_choices,
    logged_actions,
    policy_values,
)
from nextbest.training.datasets import TrainingSet
from nextbest.training.jobs import read_raw_tables
from nextbest.training.metrics import fold_interval, per_offer_uplift_metrics
from nextbest.training.ope import paired_difference
from nextbest.training.shrinkage import average_effects, greedy_actions, pick_strength, shrunk
from nextbest.training.tabular import FitConfig
from nextbest.training.uplift import (
    UpliftConfig,
    action_rows,
    build_frame,
    candidates,
    choose_learner,
    fit_learner,
    offer_scores,
    pick_learner,
    user_folds,
)

_CHUNK = 2_000  # rows per scoring call over all actions: bounds the frame (rows x actions)
# --world experiment: each e-mail's lift = (average + heterogeneity x department fit) x recency factor.
_LIFT = {"A": 0.020, "B": 0.015}  # average lifts in conversion probability (Hillstrom-like: small)
_HETEROGENEITY = {"weak": 0.004, "medium": 0.012, "strong": 0.030}


def experiment_world(users: int, heterogeneity: str, seed: int) -> tuple[TrainingSet, object]:
    """A randomised e-mail experiment (offers A and B by e-mail and a no-mail control, a third each, one row per
    customer) and its truth: a function of each row's chosen action giving the mean planted P(convert)."""
    from nextbest.training.datasets import REQUEST_COLUMNS

    rng = np.random.default_rng(seed)
    recency = rng.integers(1, 13, users).astype("float64")  # months since the last purchase
    history = np.round(rng.lognormal(5.0, 0.8, users), 2)  # spend in the past year
    mens, womens = rng.random(users) < 0.55, rng.random(users) < 0.55
    mens |= ~(mens | womens)  # every customer bought from at least one department
    newbie, web = (rng.random(users) < 0.5).astype("float64"), (rng.random(users) < 0.45).astype("float64")
    organic = 0.03 + 0.04 / (1 + np.exp((recency - 6) / 2)) + 0.01 * (history > 300)
    fit = mens.astype("float64") - womens.astype("float64")  # +1 mens only, -1 womens only, 0 both
    factor = 1.2 - 0.4 * (recency - 1) / 11  # e-mails move recent customers more
    h = _HETEROGENEITY[heterogeneity]
    lift = {"A": (_LIFT["A"] + h * fit) * factor, "B": (_LIFT["B"] - h * fit) * factor}
    arm = rng.integers(0, 3, users)  # 0 no mail, 1 e-mail A, 2 e-mail B
    p = organic + np.select([arm == 1, arm == 2], [lift["A"], lift["B"]], 0.0)
    offer = np.select([arm == 1, arm == 2], ["A", "B"], None).astype(object)
    sent = arm > 0
    frame = pd.DataFrame({
        "user_id": [f"c{i:06d}" for i in range(users)], "contact_id": [f"k{i:06d}" for i in range(users)],
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"), "recency": recency, "history": history,
        "mens": mens.astype("float64"), "womens": womens.astype("float64"), "newbie": newbie, "web": web,
        "offer_id": offer, "offer_category": np.where(sent, "any", None), "offer_kind": np.where(sent, "product", None),
        "offer_value": np.where(sent, 10.0, np.nan), "channel": np.where(sent, "email", None), "local_hour": 10.0,
        "treated": sent.astype("int64"), "label": (rng.random(users) < p).astype("int64"),
    })
    data = TrainingSet(frame, "uplift_v1", ("recency", "history", "mens", "womens", "newbie", "web"),
                       REQUEST_COLUMNS["uplift"], treatment="treated")

    def truth(rows: np.ndarray):
        def of(chosen: np.ndarray) -> float:
            gain = np.select([chosen == "A @ email", chosen == "B @ email"], [lift["A"][rows], lift["B"][rows]], 0.0)
            return float((organic[rows] + gain).mean())
        return of
    return data, truth


def per_offer_qini(scorer, test: TrainingSet, seed: int) -> dict[str, float]:
    rows, scores = offer_scores(scorer, test, seed)
    out = {}
    for offer, score in scores.items():
        keep = (rows["_offer"] == offer).to_numpy()
        m = per_offer_uplift_metrics(rows["label"].to_numpy()[keep], rows["_treated"].to_numpy()[keep],
                                     rows["_offer"].to_numpy()[keep], {offer: score[keep]}, min_rows=50)
        if offer in m:
            out[offer] = m[offer]["qini_auc"]
    return out


def qini_part(data: TrainingSet, args, settings, machine: dict) -> None:
    config = UpliftConfig(fit=FitConfig(trials=args.trials, max_rounds=200, seed=settings.seed))
    folds = user_folds(data.frame["user_id"].astype(str).to_numpy(), args.folds, settings.seed)
    learners = [n for n in candidates(data) if not args.qini_learners or n in args.qini_learners.split(",")]
    learners = ["s", *(n for n in learners if n != "s")]  # the reference first: every gap is paired with it
    auto = "auto" in args.qini_learners.split(",")  # `auto`'s choice made on each fold's training part only
    # "highest": beside auto, the former rule (the highest cross-fitted Qini of the same table), for a paired comparison
    qini: dict[str, list[dict[str, float]]] = {name: [] for name in learners + (["auto", "highest"] if auto else [])}
    highest_chosen: list[str] = []
    auto_chosen: list[str] = []
    for k in range(args.folds):
        train, test = data.subset(folds != k), data.subset(folds == k)
        for name in learners:
            started = time.perf_counter()
            qini[name].append(per_offer_qini(fit_learner(name, train, config), test, settings.seed + k))
            # One line per fold as it ends: a long run cut short still leaves its finished folds.
            print(json.dumps({"learner": name, "fold": k, "per_offer": {o: round(v, 5) for o, v in qini[name][-1].items()},
                              "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time(), 1),
                              "load": round(os.getloadavg()[0], 1)}), flush=True)
        if auto:  # the product's rule (`choose_learner` + `pick_learner`, its own sample, folds and rounds)
            started = time.perf_counter()
            table = choose_learner(train, UpliftConfig(seed=settings.seed))
            chosen, reason = pick_learner(table)
            # the chosen learner, fitted as the bench fits every learner (the same config and seed: the same model)
            qini["auto"].append(qini[chosen][-1] if chosen in learners else
                                per_offer_qini(fit_learner(chosen, train, config), test, settings.seed + k))
            auto_chosen.append(chosen)
            highest = max(table, key=lambda n: (np.nan_to_num(table[n]["qini_auc"], nan=-np.inf), n == "t"))
            qini["highest"].append(qini[highest][-1] if highest in learners else
                                   per_offer_qini(fit_learner(highest, train, config), test, settings.seed + k))
            highest_chosen.append(highest)
            name = "auto"
            print(json.dumps({"learner": name, "fold": k, "chosen": chosen, "reason": reason, "highest": highest, "per_offer": {o: round(v, 5) for o, v in qini[name][-1].items()},
                              "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time(), 1),
                              "load": round(os.getloadavg()[0], 1)}), flush=True)
    # A small log (a few thousand rows) leaves a rare offer too few rows in some folds (per_offer_uplift_metrics'
    # minimum): each fold's mean is over the offers scored in it, for the learner and S alike; a fold scoring none
    # is left out of both.
    offers = sorted(set.union(*[set(f) for f in qini["s"]]))
    for name in qini:
        pairs = [(a, b, sorted(set(a) & set(b))) for a, b in zip(qini[name], qini["s"], strict=True)]
        pairs = [(a, b, common) for a, b, common in pairs if common]
        per_fold = [np.mean([a[o] for o in common]) for a, _, common in pairs]
        gaps = [np.mean([a[o] - b[o] for o in common]) for a, b, common in pairs]
        per_offer = {o: fold_interval([a[o] - b[o] for a, b, common in pairs if o in common])
                     for o in offers if sum(o in common for *_, common in pairs) >= 2}
        print(json.dumps({"learner": name, "qini_auc_per_fold": np.round(per_fold, 4).tolist(),
                          "qini_auc": fold_interval(per_fold), "gap_to_s": fold_interval(gaps),
                          "gap_to_s_per_offer": per_offer, "folds_scored": len(pairs),
                          "offers_beating_s": int(sum(v[0] > 0 for v in per_offer.values())), "offers": len(offers),
                          **({"chosen_per_fold": auto_chosen} if name == "auto" else
                             {"chosen_per_fold": highest_chosen} if name == "highest" else {}), **machine}), flush=True)


def uplift_grid(model, rows: pd.DataFrame, train: pd.DataFrame, actions: list[str], seed: int) -> np.ndarray:
    """The learner's uplift of each action for each of `rows` (rows x actions), scored in chunks of rows."""
    out = np.empty((len(rows), len(actions)))
    for start in range(0, len(rows), _CHUNK):
        part = rows.iloc[start:start + _CHUNK].reset_index(drop=True)
        grid = action_rows(part, train, actions, "treated", seed)
        out[start:start + len(part)] = np.asarray(model.predict(grid), dtype="float64").reshape(len(actions), -1).T
    return out


def simulated_truth(settings: Settings, raw: dict, seen: pd.DataFrame):
    """A function of a half's rows and each row's chosen action: the simulator's expected conversion within 7 days of
    those actions at the logged send times, by `evaluate.simulated_truths` (the truth `nextbest evaluate` and the
    retrain gate hold the estimates to; one definition). `seen`: every contact the users received (their fatigue)."""
    from nextbest.pipelines.evaluate import simulated_truths
    from nextbest.simulation.replay import Period
    from nextbest.simulation.truth import Truth

    period = Period.from_tables({**raw, "contacts": seen}, Truth.load(settings.truth_dir))
    offers = pd.Index(period.offers["offer_id"].astype(str))
    channels = pd.Index(period.channels["channel"].astype(str))
    contacts = seen.assign(contact_id=seen["contact_id"].astype(str)).set_index("contact_id", drop=False)

    def of_half(frame: pd.DataFrame):
        decisions = contacts.loc[frame["contact_id"].astype(str)].reset_index(drop=True)

        def of(chosen: np.ndarray, per_row: bool = False):
            chosen = np.asarray(chosen, dtype=object)
            pick = np.full(len(chosen), -1, dtype=np.int64)
            sent = chosen != NO_CONTACT
            if sent.any():
                offer, channel = np.array([a.split(" @ ") for a in chosen[sent]], dtype=object).T
                o, c = offers.get_indexer(offer), channels.get_indexer(channel)
                if (o < 0).any() or (c < 0).any():
                    raise ValueError("a chosen action is not in the simulated world's catalog")
                pick[sent] = o * len(channels) + c
            p = simulated_truths(period, decisions, {"policy": pick}, seen)["policy"]
            return p if per_row else float(p.mean())
        return of
    return of_half


def policy_part(data: TrainingSet, args, settings, machine: dict, open_est=None, open_out=None,
                truth_of=None) -> None:
    """`open_est`/`open_out`: each action's open mask on the two halves (None: everything open); `truth_of(half)`: a
    function of a half's chosen actions giving their true value (None: no truth)."""
    users = data.frame["user_id"].astype(str).to_numpy()
    held = user_folds(users, 2, settings.seed + 1) == 1
    est, out = data.subset(~held), data.subset(held)
    asked = args.learners.split(",")
    if "auto" in asked:  # the learner `auto` picks on the estimation half (the product's rule, its own folds)
        chosen_learner, reason = pick_learner(choose_learner(est, UpliftConfig(seed=settings.seed)))
        asked = [chosen_learner if n == "auto" else n for n in asked]
        machine = {**machine, "auto_chose": chosen_learner, "auto_reason": reason}
    learners = tuple(dict.fromkeys(n for n in asked if n in candidates(data)))
    if open_est is not None:
        open_est, open_out = open_est(est.frame), open_out(out.frame)
    margins = [float(z) for z in str(args.margin_z).split(",")]  # the first is evaluate --logs'; the others: what-ifs
    logs = LogsConfig(folds=args.folds, learners=learners, seed=settings.seed, margin_z=margins[0], gain=args.gain)
    started = time.perf_counter()
    table = policy_values(est, logs, feasible=open_est)
    machine = {**machine, "estimation_rows": len(est.frame), "held_out_rows": len(out.frame),
               "cross_fit_seconds": round(time.perf_counter() - started, 1)}
    actions = sorted(p.removeprefix("everyone: ") for p in table.index if p.startswith("everyone: "))
    open_ = None if open_out is None else np.stack([open_out[a] for a in actions], axis=1)
    # The shrinkage centers: each action's average effect on the whole estimation half, as a model fitted on it uses.
    action_est, propensity_est = logged_actions(est.frame, est.treatment)
    center = average_effects(action_est, propensity_est, est.frame[est.label].to_numpy(dtype="float64"), actions,
                             NO_CONTACT)
    chosen, shrinkage, what_if = {}, table.attrs["shrinkage"], {}
    for learner in learners:
        model = fit_learner(learner, est, _fit_config(logs))
        uplift = uplift_grid(model, out.frame, est.frame, actions, settings.seed)
        strength = shrinkage[learner]["strength"]  # chosen on the estimation half
        chosen[learner] = greedy_actions(shrunk(uplift, center, strength), actions, NO_CONTACT,
                                         open_)
        chosen[f"{learner} (argmax)"] = greedy_actions(uplift, actions, NO_CONTACT, open_)
        for z in margins[1:]:  # the strength another margin would have chosen on the same estimation half's gains
            at_z = pick_strength(shrinkage[learner]["gain_means"], shrinkage[learner]["gain_errors"], z)
            chosen[f"{learner} (margin {z:g})"] = greedy_actions(shrunk(uplift, center, at_z), actions, NO_CONTACT,
                                                                 open_)
            what_if[f"{learner} (margin {z:g})"] = at_z
    for a in actions:
        chosen[f"everyone: {a}"] = (np.full(len(out.frame), a, dtype=object) if open_out is None else
                                    np.where(open_out[a], a, NO_CONTACT).astype(object))
    chosen[f"nobody ({NO_CONTACT})"] = np.full(len(out.frame), NO_CONTACT, dtype=object)
    heldout = judge_choices(out, chosen, logs)
    fixed = [p for p in table.index if table.loc[p, "kind"] == "fixed"]
    # The held-out reference is chosen on the estimation half (its best cross-fitted DR): the best of ~60 picked on
    # the held-out half itself is the luckiest there (+80 % over its truth at 1,000 users).
    best_fixed_out = table.loc[fixed, "dr"].idxmax()
    best_ips_out = heldout.loc[fixed, "ips"].idxmax()
    # attrs hold every policy's choices: pandas deep-copies them on each `.loc`, which cost 90 s at 1,000 users.
    terms, chosen_est, best_fixed_est = heldout.attrs["dr_terms"], table.attrs["chosen"], table.attrs["best_fixed"]
    heldout.attrs, table.attrs = {}, {}
    if truth_of is not None:
        truth_est, truth_out = truth_of(est, ~held), truth_of(out, held)
    if getattr(args, "dump", None) and truth_of is not None:  # per decision of the estimation half, for diagnosis
        dump = pd.DataFrame({"user_id": est.frame["user_id"].astype(str).to_numpy(),
                             "contact_id": est.frame["contact_id"].astype(str).to_numpy(), "logged": action_est,
                             "propensity": propensity_est, "reward": est.frame[est.label].to_numpy(dtype="float64")})
        dump = pd.concat([dump, pd.DataFrame({f"chosen: {p}": chosen_est[p] for p in table.index}),
                          pd.DataFrame({f"truth: {p}": truth_est(chosen_est[p], per_row=True) for p in table.index}),
                          pd.DataFrame({"truth: logged": truth_est(action_est, per_row=True)})],
                         axis=1)
        dump.to_parquet(f"{args.dump}-sample{getattr(args, 'sample', None)}-est.parquet")
    for policy in table.index:
        e, h = table.loc[policy], heldout.loc[policy]
        diff = paired_difference(terms[policy], terms[best_fixed_out])
        row = {"policy": policy, "kind": e["kind"],
               "crossfit_snips": [round(e[k], 5) for k in ("snips", "snips_low", "snips_high")],
               "crossfit_dr": [round(e[k], 5) for k in ("dr", "dr_low", "dr_high")],
               "crossfit_vs_best_fixed": [round(e[k], 5) for k in ("vs_best_fixed", "vs_best_fixed_low", "vs_best_fixed_high")],
               "heldout_ips": [round(h[k], 5) for k in ("ips", "ips_low", "ips_high")],
               "heldout_dr": [round(h[k], 5) for k in ("dr", "dr_low", "dr_high")],
               "heldout_dr_vs_best_fixed": [round(x, 5) for x in (diff.value, diff.low, diff.high)],
               "snips_err_vs_heldout_ips": _rel(e["snips"], h["ips"]), "dr_err_vs_heldout_ips": _rel(e["dr"], h["ips"]),
               "matched": int(e["matched"]), "effective_n": round(float(e["effective_n"]), 1),
               "contacted": round(float(e["contacted_share"]), 3)}
        if policy in shrinkage:
            row["strength"] = shrinkage[policy]["strength"]
            row["strength_by_fold"] = shrinkage[policy]["by_fold"]
            row["gain_lower_bounds"] = {str(k): round(v, 5) for k, v in shrinkage[policy]["gain_lower_bounds"].items()}
        if truth_of is not None:
            t_est, t_out = truth_est(chosen_est[policy]), truth_out(chosen[policy])
            row.update(sim_truth_est=round(t_est, 5), sim_truth_heldout=round(t_out, 5),
                       sim_truth_heldout_vs_best_fixed=round(t_out - truth_out(chosen[best_fixed_out]), 5),
                       snips_err_vs_sim=_rel(e["snips"], t_est), dr_err_vs_sim=_rel(e["dr"], t_est),
                       snips_covers_sim=bool(e["snips_low"] <= t_est <= e["snips_high"]),
                       dr_covers_sim=bool(e["dr_low"] <= t_est <= e["dr_high"]),
                       heldout_ips_err_vs_sim=_rel(h["ips"], t_out), heldout_dr_err_vs_sim=_rel(h["dr"], t_out))
        print(json.dumps({**row, "best_fixed_crossfit": best_fixed_est, "best_fixed_heldout": best_fixed_out,
                          "best_ips_on_heldout": best_ips_out,
                          **machine}), flush=True)
    for policy, strength in what_if.items():  # held out only: the cross-fitted table was judged at the first margin
        h, diff = heldout.loc[policy], paired_difference(terms[policy], terms[best_fixed_out])
        row = {"policy": policy, "kind": "margin what-if", "strength": strength,
               "heldout_ips": [round(h[k], 5) for k in ("ips", "ips_low", "ips_high")],
               "heldout_dr": [round(h[k], 5) for k in ("dr", "dr_low", "dr_high")],
               "heldout_dr_vs_best_fixed": [round(x, 5) for x in (diff.value, diff.low, diff.high)]}
        if truth_of is not None:
            t_out = truth_out(chosen[policy])
            row.update(sim_truth_heldout=round(t_out, 5),
                       sim_truth_heldout_vs_best_fixed=round(t_out - truth_out(chosen[best_fixed_out]), 5))
        print(json.dumps({**row, "best_fixed_heldout": best_fixed_out, **machine}), flush=True)


def nba_part(settings: Settings, users: int, machine: dict) -> None:
    from nextbest.pipelines.evaluate import _decisions, champion_set, load_period, model_policies, off_policy

    world, tables = load_period(settings)
    period = world.sample(users or None, seed=7)
    cutoff, logged = _decisions(settings, tables, period)
    policy = model_policies(settings, period, models=champion_set(settings), as_of=cutoff)[0]
    started = time.perf_counter()
    table = off_policy(settings, policy, period, logged)
    seconds = round(time.perf_counter() - started, 1)
    for _, r in table.iterrows():
        print(json.dumps({"policy": policy.name, "method": r["method"], "estimate": round(r["value"], 5),
                          "ci": [round(r["ci_low"], 5), round(r["ci_high"], 5)], "truth": round(r["simulated_truth"], 5),
                          "error": round(r["error"], 4), "judged": int(r["n"]), "matched": table.attrs["matched"],
                          "off_policy_seconds": seconds, **machine}), flush=True)


def _rel(estimate: float, truth: float) -> float | None:
    return round(float(estimate) / truth - 1, 4) if truth > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("qini", "policy", "both", "nba"), default="both")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--users", type=int, default=3_000, help="users sampled from the log (0 = all)")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--dump", default="", help="policy part: write each estimation-half decision's logged action, "
                        "propensity, reward and every policy's choice and truth to <dump>-sample<k>-est.parquet")
    parser.add_argument("--sample", type=int, default=None,
                        help="the home's log: judge the sample-th (0, 1, ...) of disjoint samples of --users users")
    parser.add_argument("--learners", default="s,t,funnel", help="policy part: learners whose policies are judged")
    parser.add_argument("--qini-learners", default="", help="qini part: learners paired with s (default: every candidate)")
    parser.add_argument("--world", choices=("home", "experiment"), default="home",
                        help="home: the nextbest home's contact log; experiment: a generated e-mail experiment")
    parser.add_argument("--heterogeneity", choices=tuple(_HETEROGENEITY), default="weak", help="--world experiment")
    parser.add_argument("--world-seed", type=int, default=0, help="--world experiment: the world's seed")
    parser.add_argument("--margin-z", default=str(LogsConfig().margin_z),
                        help="policy part: standard errors a shrinkage strength's gain must clear (LogsConfig.margin_z); "
                             "several, comma-separated: the first judged as evaluate --logs does, the others' strengths "
                             "(chosen on the same estimation half) judged on the held-out half beside it")
    parser.add_argument("--gain", choices=("ips", "dr"), default=LogsConfig().gain,
                        help="policy part: how a shrinkage strength's gain is estimated (LogsConfig.gain)")
    args = parser.parse_args()
    settings = Settings()
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "load": round(os.getloadavg()[0], 1), "date": time.strftime("%Y-%m-%d %H:%M"), "users": args.users,
               "gain": args.gain}
    if args.part == "nba":
        return nba_part(settings, args.users, machine)
    started = time.perf_counter()
    if args.world == "experiment":
        data, truth = experiment_world(args.users or 50_000, args.heterogeneity, args.world_seed)
        machine = {**machine, "world": f"experiment/{args.heterogeneity}", "world_seed": args.world_seed,
                   "rows": len(data.frame), "folds": args.folds}
        if args.part in ("qini", "both"):
            qini_part(data, args, settings, machine)
        if args.part in ("policy", "both"):
            policy_part(data, args, settings, machine, truth_of=lambda half, mask: truth(np.flatnonzero(mask)))
        print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time(), 1),
                          **machine}))
        return
    raw = read_raw_tables(settings)
    seen = raw["contacts"]  # every contact of every user: the truth's fatigue counts them
    ids = raw["contacts"]["user_id"].astype(str)
    if args.sample is not None:  # the sample-th of disjoint samples of --users users (a seeded permutation)
        order = np.random.default_rng(settings.seed).permutation(np.sort(ids.unique()))
        keep = order[args.sample * args.users:(args.sample + 1) * args.users]
        if not args.users or not len(keep):  # the last sample may be short: the users left
            raise SystemExit(f"--sample {args.sample} of --users {args.users:,}: the log has {len(order):,} users")
        raw["contacts"] = judged_contacts(raw["contacts"][ids.isin(set(keep)).to_numpy()], None, settings.seed)
        machine = {**machine, "sample": args.sample, "sample_users": len(keep)}
    else:  # the sample `nextbest evaluate --logs --users` judges
        raw["contacts"] = judged_contacts(raw["contacts"], args.users or None, settings.seed)
    data = build_frame(feature_store(settings), raw, UpliftConfig())
    machine = {**machine, "rows": len(data.frame), "folds": args.folds}
    if args.part in ("qini", "both"):
        qini_part(data, args, settings, machine)
    if args.part in ("policy", "both"):
        truth = simulated_truth(settings, raw, seen) if (settings.truth_dir / "truth.json").exists() else None
        policy_part(data, args, settings, machine, open_est=lambda f: frame_feasibility(raw, f),
                    open_out=lambda f: frame_feasibility(raw, f),
                    truth_of=None if truth is None else lambda half, mask: truth(half.frame))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time(), 1),
                      **machine}))


if __name__ == "__main__":
    main()
