"""Off-policy evaluation of a company's experiment log, cross-fitted, against the planted truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.pipelines.offpolicy import (
    NO_CONTACT,
    LogsConfig,
    converted_within,
    logged_actions,
    logged_feasibility,
    policy_values,
)
from tests.test_uplift_learners import planted


def true_value(frame, chosen: np.ndarray) -> float:
    """P(convert) of each user under the chosen action, from the planted model, averaged."""
    f1, f2 = frame["f1"].to_numpy(), frame["f2"].to_numpy()
    lift = np.where(chosen == "A @ email", 0.2 * (f1 > 0), np.where(chosen == "B @ email", 0.2 * (f1 < 0), 0.0))
    return float(np.mean(0.05 + 0.05 * (f2 > 0) + lift))


def test_policies_are_judged_out_of_fold_within_10_percent_of_the_truth():
    data = planted(6_000, seed=5)
    table = policy_values(data, LogsConfig(folds=2, learners=("t",), rounds=60))
    assert set(table.index) == {"t", "t (argmax)", "everyone: A @ email", "everyone: B @ email", f"nobody ({NO_CONTACT})"}
    for policy, row in table.iterrows():
        truth = true_value(data.frame, table.attrs["chosen"][policy])
        for est in ("snips", "dr"):
            assert row[est] == pytest.approx(truth, rel=0.1), (policy, est, row[est], truth)
            assert row[f"{est}_low"] < row[est] < row[f"{est}_high"]
    # The learned policy targets each offer where it works: better than sending everyone either offer, paired.
    assert table.attrs["best_fixed"].startswith("everyone")
    assert table.loc["t", "vs_best_fixed_low"] > 0
    assert 0.3 < table.loc["t", "contacted_share"] <= 1


def test_logged_actions_use_the_logged_propensity_or_the_experiment_shares():
    frame = planted(300, seed=6).frame
    action, p = logged_actions(frame)
    assert set(action) == {"A @ email", "B @ email", NO_CONTACT}
    shares = {a: np.mean(action == a) for a in set(action)}
    np.testing.assert_allclose(p, [shares[a] for a in action])
    action, p = logged_actions(frame.assign(propensity=0.25))
    assert (p == 0.25).all()


def test_a_log_without_a_control_group_is_refused_with_the_reason():
    data = planted(300, seed=6)
    sent_only = data.subset(data.frame["treated"].to_numpy() == 1)
    with pytest.raises(ValueError, match="control group"):
        policy_values(sent_only, LogsConfig(folds=2, learners=("t",)))


def test_evaluate_logs_judges_the_simulated_log_from_its_tables_only(trained, monkeypatch):
    from typer.testing import CliRunner

    from nextbest.pipelines.cli import app

    monkeypatch.setenv("NEXTBEST_HOME", str(trained.home))
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--logs", "--folds", "2", "--learners", "t", "--users", "150"])
    assert result.exit_code == 0, result.output
    assert "reward: conversion within 7 d" in result.output and "nobody (no contact)" in result.output
    assert "everyone:" in result.output and "│ t " in result.output and "│ t (argmax) " in result.output
    assert "t: shrinkage strength" in result.output  # the learned policy's choice, beside the pure argmax
    assert "biased upward" in " ".join(result.output.split())  # the fixed rows' winner's curse is named
    bad = runner.invoke(app, ["evaluate", "--logs", "--learners", "q"])
    assert bad.exit_code == 2 and "--learners 'q'" in bad.output and "Traceback" not in bad.output


def test_evaluate_logs_judges_policies_only_on_actions_open_at_each_logged_decision(trained, monkeypatch):
    """`evaluate --logs` gives every policy only the actions the logging policy could take at each decision
    (consent, suppressions, eligibility: `logged_feasibility`), as the retrain gate and the bench do: "everyone X
    on a channel a user never consented to" is no contact for that user, not an action no logged row can match
    (without it the CLI judged a different policy from the bench's on the demo world)."""
    from nextbest.features.settings import Settings
    from nextbest.features.store import training_store
    from nextbest.pipelines.cli import _evaluate_logs, judged_contacts
    from nextbest.pipelines.offpolicy import frame_feasibility
    from nextbest.training.jobs import read_raw_tables
    from nextbest.training.uplift import UpliftConfig, build_frame

    monkeypatch.setenv("NEXTBEST_HOME", str(trained.home))
    settings = Settings()
    table, _ = _evaluate_logs(settings, 7, 2, "t", 150)
    raw = read_raw_tables(settings)
    raw["contacts"] = judged_contacts(raw["contacts"], 150, settings.seed)  # the decisions the CLI judges
    open_ = frame_feasibility(raw, build_frame(training_store(settings), raw, UpliftConfig(window_days=7)).frame)
    chosen = table.attrs["chosen"]
    assert len(next(iter(chosen.values()))) == len(next(iter(open_.values())))  # the same judged decisions
    closed = {a: int((~o).sum()) for a, o in open_.items() if a in {p.removeprefix("everyone: ") for p in chosen}}
    assert sum(closed.values()) > 0, closed  # some action is closed somewhere: the check below can fail
    for policy, picks in chosen.items():
        sent = picks != NO_CONTACT
        assert all(open_[a][i] for i, a in zip(np.flatnonzero(sent), picks[sent], strict=True)), policy
        if policy.startswith("everyone: "):  # its action wherever open, no contact elsewhere
            np.testing.assert_array_equal(sent, open_[policy.removeprefix("everyone: ")])


def test_off_policy_evaluation_of_logs_does_not_need_the_simulator():
    """The off-policy code (the logs' estimator, the gate's decisions and feasibility) imports no simulator module,
    not even through the modules of ours it imports, at their top or inside functions (read, not run)."""
    import ast
    from pathlib import Path

    import nextbest.pipelines.offpolicy as module

    root = Path(module.__file__).resolve().parents[1]  # the repository: package-dir maps its top-level folders

    def ours(node) -> set[str]:
        names = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(node) if isinstance(n, ast.Import) for a in n.names}
        return {n for n in names if n.startswith("nextbest.")}

    seen, todo = set(), ["nextbest.pipelines.offpolicy"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = root.joinpath(*name.split(".")[1:])
        file = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        if file.exists():
            todo += sorted(ours(ast.parse(file.read_text())))
    assert "nextbest.training.uplift" in seen and "nextbest.serving.policy" in seen  # the walk follows our imports
    assert not [n for n in seen if n.startswith("nextbest.simulation")], sorted(seen)


def _log(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["contact_id", "user_id", "sent_at", "offer_id", "channel", "converted_at"]).assign(
        sent_at=lambda d: pd.to_datetime(d["sent_at"], utc=True), converted_at=lambda d: pd.to_datetime(d["converted_at"], utc=True))


def test_the_reward_is_a_conversion_within_the_labels_window():
    log = _log([("c1", "u1", "2026-03-01 10:00", "A", "email", "2026-03-04 09:00"),   # 3 days after: a reward
                ("c2", "u2", "2026-03-01 10:00", "A", "email", "2026-03-12 09:00"),   # 11 days after: no reward
                ("c3", "u3", "2026-03-01 10:00", "A", "email", "2026-02-27 09:00"),   # before the send: no reward
                ("c4", "u4", "2026-03-01 10:00", "A", "email", None)])
    np.testing.assert_array_equal(converted_within(log, 7), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(converted_within(log, 14), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(converted_within(log.drop(columns="converted_at"), 7), [0.0] * 4)


def test_feasibility_reads_only_the_columns_a_company_gave():
    """Offers without valid_from/valid_to/eligibility and no suppressions table: consent alone closes a channel;
    with them, an expired offer and a failed eligibility rule close the offer."""
    users = pd.DataFrame({"user_id": ["u1", "u2"], "signup_at": pd.to_datetime(["2025-01-01"] * 2, utc=True),
                          "consent_email": [True, False], "consent_push": [True, True]})
    events = pd.DataFrame({"user_id": ["u1"], "ts": pd.to_datetime(["2026-02-01"], utc=True), "type": ["purchase"]})
    offers = pd.DataFrame({"offer_id": ["A", "B"], "category": ["x", "y"], "value": [10.0, 20.0]})
    log = _log([("c1", "u1", "2026-03-01 10:00", "A", "email", None), ("c2", "u2", "2026-03-01 10:00", "B", "push", None)])
    tables = {"users": users, "events": events, "offers": offers}
    open_ = logged_feasibility(tables, log, offers, ["email", "push"])
    assert open_.shape == (2, 2, 2)
    assert open_[0].all() and (open_[1][:, 0] == False).all() and open_[1][:, 1].all()  # noqa: E712 - u2: no email
    ruled = offers.assign(valid_to=pd.to_datetime(["2026-02-01", None], utc=True),
                          eligibility=[None, "lifecycle_stage in [customer]"])
    open_ = logged_feasibility(tables, log, ruled, ["email", "push"])
    assert not open_[:, 0].any()  # offer A expired before both sends
    assert open_[0, 1].all() and not open_[1, 1].any()  # offer B: u1 bought before (a customer), u2 never did


def test_the_gate_judges_off_policy_only_decisions_no_challenger_trained_on():
    """On a company's logs the paired DR difference decides, unless a contact-log challenger's holdout was a random
    split (one send time): then the decisions since its holdout began include its training rows, and each
    challenger's holdout decides instead, saying why."""
    from nextbest.pipelines.retrain import gate_decision

    table = pd.DataFrame({"incremental_revenue": [np.nan, np.nan], "violations": [np.nan, np.nan],
                          "dr": [0.050, 0.056], "dr_diff": [0.0, 0.006], "dr_diff_low": [0.0, 0.002],
                          "dr_diff_high": [0.0, 0.010], "matched": [400, 420], "logged": [3000, 3000]},
                         index=pd.Index(["champions", "challengers"], name="models"))
    waiting = {"uplift": "3", "conversion": "4"}
    by_time = {"uplift": {"holdout_split": "time", "better_on_holdout": False},
               "conversion": {"holdout_split": "time", "better_on_holdout": True}}
    decision = gate_decision(table, waiting, by_time, pd.Timestamp("2026-05-01", tz="UTC"), min_matched=200)
    assert decision["by"] == "off-policy" and decision["promote"] == waiting
    at_random = {**by_time, "uplift": {"holdout_split": "stratified", "better_on_holdout": False}}
    decision = gate_decision(table, waiting, at_random, pd.Timestamp("2026-05-01", tz="UTC"), min_matched=200)
    assert decision["by"] == "holdout" and decision["promote"] == {"conversion": "4"}
    assert "holdout of uplift is not a time split" in decision["reason"]
    thin = gate_decision(table, waiting, by_time, None, min_matched=1000)
    assert thin["by"] == "holdout" and "only 400 logged decisions match" in thin["reason"]
    # A higher DR whose paired interval reaches below 0 is the logs' noise, not a better policy: the champions stay.
    noisy = table.assign(dr_diff_low=[0.0, -0.001])
    decision = gate_decision(noisy, waiting, by_time, pd.Timestamp("2026-05-01", tz="UTC"), min_matched=200)
    assert decision["by"] == "off-policy" and not decision["promoted"] and decision["promote"] == {}
    # A time split is one where no training row shares the holdout's times: an export with one send time (Thornton's
    # experiment, benchmarks/export_thornton.py) is a random split, whichever way the rows were ordered.
    from nextbest.training.jobs import holdout_kind

    once = pd.Series(pd.Timestamp("2004-06-01 08:00", tz="UTC"), index=range(5))
    assert holdout_kind(once, once) == "stratified"
    assert holdout_kind(once, once + pd.Timedelta(seconds=1)) == "time"
    assert holdout_kind(once + pd.Timedelta(days=1), once) == "stratified"


def test_a_service_logged_decision_is_open_only_where_the_service_allowed_it():
    """The service's own record of refused (offer, channel) pairs (its caps, quiet hours, ...) closes them: a target
    policy that values the refused action most still never picks it; a contact exported without such a record keeps
    the tables' feasibility."""
    from nextbest.pipelines.logs_to_contacts import logs_to_contacts

    users = pd.DataFrame({"user_id": ["u1", "u2"], "signup_at": pd.to_datetime(["2025-01-01"] * 2, utc=True),
                          "consent_email": [True, True], "consent_push": [True, True]})
    events = pd.DataFrame({"user_id": ["u1"], "ts": pd.to_datetime(["2026-02-01"], utc=True), "type": ["purchase"]})
    offers = pd.DataFrame({"offer_id": ["A", "B"], "category": ["x", "y"], "value": [10.0, 20.0]})
    decisions = [  # u1: the email cap refused A @ email, quiet hours every push; u2: the ledger refused everything
        {"decision_id": "d1", "at": "2026-03-01T10:00:00+00:00", "user_id": "p1", "no_action_propensity": 0.1,
         "actions": [{"offer_id": "B", "channel": "email", "send_at": "2026-03-01T10:00:00+00:00", "propensity": 0.9}],
         "reasons": [["cap_offer", "A", "email"], ["quiet_hours", None, "push"]]},
        {"decision_id": "d2", "at": "2026-03-01T10:00:00+00:00", "user_id": "p2", "no_action_propensity": 1.0,
         "actions": [], "reasons": [["ledger_unavailable", None, None]]}]
    log = logs_to_contacts(decisions, [], {"p1": "u1", "p2": "u2"}, pd.Timestamp("2026-03-02", tz="UTC"))
    exported = _log([("c9", "u1", "2026-03-01 10:00", "A", "email", None)])
    log = pd.concat([log, exported], ignore_index=True)
    open_ = logged_feasibility({"users": users, "events": events, "offers": offers}, log, offers, ["email", "push"])
    assert open_[0].tolist() == [[False, False], [True, False]]  # only B @ email was open to u1
    assert not open_[1].any()
    assert open_[2].all()  # no service record: consent and the catalog open everything
    ev = np.array([[[9.0, 1.0], [2.0, 1.0]]] * 3)  # the policy values A @ email (refused for u1) most
    best = np.where(open_, ev, -np.inf).reshape(3, -1).argmax(axis=1)
    assert best[0] == 2 and best[2] == 0  # u1: B @ email, the best it could send; the exported row: A @ email


def test_scoring_in_batches_or_chunks_changes_no_estimate(monkeypatch):
    # The judge scores every asked (row, action) pair in a few large calls and the policies' grid in chunks of rows,
    # to fit a 20k-user log; one call per action and policy (`prepare` off) or tiny chunks must give the same table.
    from nextbest.pipelines import offpolicy

    data = planted(1_000, seed=8)
    config = LogsConfig(folds=2, learners=("t",), rounds=20)
    batched = policy_values(data, config)
    monkeypatch.setattr(offpolicy, "_GRID_ROWS", 250)  # several chunks of rows and of (row, action) pairs
    chunked = policy_values(data, config)
    monkeypatch.setattr(offpolicy._RewardModel, "prepare", lambda self, asked: None)
    one_by_one = policy_values(data, config)
    for other in (chunked, one_by_one):
        pd.testing.assert_frame_equal(batched, other)
        for name, terms in batched.attrs["dr_terms"].items():
            np.testing.assert_array_equal(terms, other.attrs["dr_terms"][name])
    assert batched["matched"].min() > 0  # every policy rests on logged decisions: the comparison means something


def test_the_best_fixed_reference_of_each_fold_is_chosen_on_the_other_folds():
    # Picked on the decisions it is judged on, the best of many fixed policies is the luckiest: its estimate is biased
    # up. Each fold's reference is the fixed policy with the best IPS value on the other folds.
    from nextbest.pipelines.offpolicy import _best_fixed_out_of_fold

    action = np.array(["a", "b", "a", "b", "a", "b"], dtype=object)
    chosen = {"everyone: a": np.full(6, "a", dtype=object), "everyone: b": np.full(6, "b", dtype=object)}
    reward = np.array([1.0, 0, 1, 0, 0, 1])  # a wins on fold 0 (rows 0-3), b on fold 1 (rows 4-5)
    folds = np.array([0, 0, 0, 0, 1, 1])
    terms = {"everyone: a": np.arange(6.0), "everyone: b": -np.arange(6.0)}
    reference, by_fold = _best_fixed_out_of_fold(list(chosen), chosen, action, np.full(6, 0.5), reward, folds, terms)
    assert by_fold == ["everyone: b", "everyone: a"]  # fold 0 judged by what won on fold 1, and the other way round
    np.testing.assert_array_equal(reference, [-0.0, -1, -2, -3, 4, 5])


def test_the_truth_of_a_judged_decision_counts_every_contact_seen_not_only_the_judged_log(trained):
    """`simulated_truths` (the truth beside off_policies' estimates): a user's fatigue at a judged decision counts the
    contacts `seen` in the week before it, also those outside the judged log (another campaign, the history before the
    cutoff), as the world counted them when it drew the outcomes; a "no contact" pick is the organic purchase either way."""
    from nextbest.pipelines.evaluate import load_period, simulated_truths
    from nextbest.simulation.truth import Oracle

    world, tables = load_period(trained)
    c = tables["contacts"]
    sent = c[c["channel"].notna()].sort_values("sent_at", kind="stable")
    judged = sent.drop_duplicates("user_id", keep="last").head(60).reset_index(drop=True)  # one decision per user
    # Another system sent each of them two messages the day before: in `seen`, not in the judged log.
    other = pd.concat([judged.assign(contact_id=judged["contact_id"].astype(str) + f"-other{k}",
                                     sent_at=pd.to_datetime(judged["sent_at"], utc=True) - pd.Timedelta(hours=20 + k))
                       for k in range(2)], ignore_index=True)
    channels = list(world.channels["channel"].astype(str))
    logged = (pd.Index(world.offers["offer_id"].astype(str)).get_indexer(judged["offer_id"].astype(str)) * len(channels)
              + pd.Index(channels).get_indexer(judged["channel"].astype(str)))
    picks = {"the logged action": logged, "nobody": np.full(len(judged), -1)}
    alone = simulated_truths(world, judged, picks)
    tired = simulated_truths(world, judged, picks, seen=pd.concat([judged, other], ignore_index=True))
    oracle = Oracle(world.truth, world.offers)
    u = pd.Index(world.user_ids).get_indexer(judged["user_id"].astype(str))
    at = pd.to_datetime(judged["sent_at"], utc=True)
    expect = {k: oracle.p_convert(u, judged["offer_id"].astype(str).to_numpy(), judged["channel"].astype(str).to_numpy(),
                                  at, recent_contacts=k) for k in (0, 2)}
    np.testing.assert_allclose(alone["the logged action"], expect[0])
    np.testing.assert_allclose(tired["the logged action"], expect[2])
    assert (tired["the logged action"] < alone["the logged action"]).mean() > 0.9  # tired users buy less
    np.testing.assert_allclose(tired["nobody"], alone["nobody"])
    np.testing.assert_allclose(alone["nobody"], oracle.p_organic(u, at))
    with pytest.raises(ValueError, match="among the contacts `seen`"):
        simulated_truths(world, judged, picks, seen=other)


def test_the_truth_of_a_pick_the_service_did_not_send_is_taken_at_the_policys_own_send_hour(trained):
    """A hold-out decision is logged at the decision's instant (06:00 UTC in `nextbest loop`: night in the
    Americas); the truth of a policy's contact there is its P(convert) at the policy's own local send hour for the
    channel, the hour the service would have sent at, as on a logged send; an exported contact keeps its time."""
    from nextbest.pipelines.evaluate import load_period, simulated_truths
    from nextbest.simulation.truth import Oracle

    world, tables = load_period(trained)
    users = world.user_ids[:40]
    at = pd.Timestamp("2026-09-20 06:00", tz="UTC")
    held = pd.DataFrame({"contact_id": [f"nb-{u}" for u in users], "user_id": users, "sent_at": at, "offer_id": None,
                         "channel": None, "variant": "control", "refused": "[]"})
    pick = {"nba": np.full(len(users), 1)}  # offer 0 on the second channel
    hours = {"nba": np.full((len(users), len(world.channels)), 10)}
    oracle = Oracle(world.truth, world.offers)
    u = np.arange(len(users))
    offer, channel = world.offers["offer_id"].astype(str).iloc[0], world.channels["channel"].astype(str).iloc[1]
    sent = simulated_truths(world, held, pick, hours=hours)["nba"]
    when = at + pd.to_timedelta((10 - oracle.local_hour(u, at)) % 24, unit="h")
    np.testing.assert_allclose(oracle.local_hour(u, when), 10)
    np.testing.assert_allclose(sent, oracle.p_convert(u, np.full(len(u), offer), np.full(len(u), channel), when))
    exported = held.assign(refused=None)  # not the service's: its logged time is the logging policy's send time
    np.testing.assert_allclose(simulated_truths(world, exported, pick, hours=hours)["nba"],
                               oracle.p_convert(u, np.full(len(u), offer), np.full(len(u), channel), at))


def test_off_policies_seen_changes_the_truth_beside_the_estimates_and_nothing_else(trained):
    """`off_policies(seen=)`: the same decisions judged with every contact the users received as `seen` (what
    `nextbest evaluate` and the retrain gate pass) give the same estimates and a truth that counts the contacts before
    the judged log's cutoff, so it is never above the truth that forgets them."""
    from nextbest.features.store import read_table
    from nextbest.pipelines.evaluate import ModelPolicy, load_period, off_policies
    from nextbest.pipelines.offpolicy import decisions_since

    world, tables = load_period(trained)
    period = world.sample(300, seed=3)
    snapshots = read_table(trained, "behaviour")["event_timestamp"]
    _, logged = decisions_since(tables, snapshots, set(period.user_ids))
    n_o, n_c = len(period.offers), len(period.channels)
    ev = np.tile(np.arange(n_o * n_c, dtype=float).reshape(1, n_o, n_c) / (n_o * n_c), (period.n_users, 1, 1))
    policy = ModelPolicy("last open action", ev, np.full((period.n_users, n_c), 10))
    alone = off_policies(trained, {policy.name: policy}, period, logged)[policy.name]
    seen = off_policies(trained, {policy.name: policy}, period, logged, seen=tables["contacts"])[policy.name]
    pd.testing.assert_frame_equal(alone.drop(columns=["simulated_truth", "error"]), seen.drop(columns=["simulated_truth", "error"]))
    assert seen["simulated_truth"].iloc[0] < alone["simulated_truth"].iloc[0]  # the history before the cutoff tires users


def test_the_simulation_gate_promotes_only_a_surely_better_policy():
    """With a truth the gate reads the challengers' revenue minus the champions', paired per user on the same replay:
    more revenue within the sample's noise (the interval reaching below 0) keeps the champions; an interval above 0
    promotes, unless a rule was broken."""
    from nextbest.pipelines.retrain import gate_decision

    def table(low: float, violations: int = 0) -> pd.DataFrame:
        return pd.DataFrame({"incremental_revenue": [9_000.0, 9_090.0], "violations": [0, violations],
                             "revenue_diff": [0.0, 90.0], "revenue_diff_low": [0.0, low],
                             "revenue_diff_high": [0.0, 200.0], "dr": [0.05, 0.05]},
                            index=pd.Index(["champions", "challengers"], name="models"))

    waiting = {"uplift": "2"}
    trained = {"uplift": {"holdout_split": "time", "better_on_holdout": True}}
    since = pd.Timestamp("2026-05-01", tz="UTC")
    noise = gate_decision(table(-20.0), waiting, trained, since, min_matched=200)
    assert noise["by"] == "simulation" and not noise["promoted"] and noise["promote"] == {}
    assert "+90.0 [-20.0, +200.0] paired per user, not surely better" in noise["reason"]
    sure = gate_decision(table(15.0), waiting, trained, since, min_matched=200)
    assert sure["promoted"] and sure["promote"] == waiting and "surely better" in sure["reason"]
    assert not gate_decision(table(15.0, violations=1), waiting, trained, since, min_matched=200)["promoted"]


def test_the_judge_weighs_sends_and_hold_outs_among_themselves_and_leaves_no_action_out():
    """`judged_log` by hand: P(sent or held out) = 1 - P(no contact) + P(held out); a send weighs (1 - h) x the
    policy's P(it) over that, a hold-out h over that, with h the logged P(held out) or (`stratify`) the held-out
    share among the log's decisions in the same state (the policy would send, or not); "no action" rows are not
    judged; an exported log is read as it was; the caller's table is unchanged."""
    from nextbest.pipelines.offpolicy import judged_log

    # four decisions where the policy would send (P(no action) 0.01), two where it would not (0.8); P(held out) 0.1
    would = 0.1 + 0.9 * 0.01
    log = pd.DataFrame({
        "contact_id": list("abcdef"), "user_id": list("uvwxyz"), "channel": ["email", None, "sms", "email", None, None],
        "variant": ["treatment", "control", "treatment", "explore", "control", "no_action"],
        "propensity": [0.9 * 0.95, 0.1, 0.9 * 0.95, 0.9 * 0.01, 0.1, 0.1 + 0.9 * 0.8],
        "no_contact_propensity": [would, would, would, 0.1 + 0.9 * 0.8, 0.1 + 0.9 * 0.8, 0.1 + 0.9 * 0.8],
        "holdout_propensity": 0.1})
    log.loc[3, "no_contact_propensity"] = would  # the explored send: the policy would have sent too
    plain = judged_log(log, stratify=False)
    assert plain["contact_id"].tolist() == list("abcde")  # the "no action" decision is not judged
    send_or_held = 1 - would + 0.1
    np.testing.assert_allclose(plain["propensity"], [0.855 / send_or_held, 0.1 / send_or_held, 0.855 / send_or_held,
                                                     0.009 / send_or_held, 0.1 / (1 - 0.82 + 0.1)])
    strat = judged_log(log)  # held-out shares: 1 of 4 "would send" decisions, 1 of 2 "would not"
    h = 0.25
    np.testing.assert_allclose(strat["propensity"], [
        0.75 * 0.95 / (h + 0.75 * 0.99), h / (h + 0.75 * 0.99), 0.75 * 0.95 / (h + 0.75 * 0.99),
        0.75 * 0.01 / (h + 0.75 * 0.99), 0.5 / (0.5 + 0.5 * 0.2)])
    assert log["propensity"].tolist()[:2] == [0.855, 0.1] and len(log) == 6  # the caller's table unchanged
    exported = log.drop(columns=["no_contact_propensity", "holdout_propensity"]).iloc[:5]
    pd.testing.assert_frame_equal(judged_log(exported), exported)  # an exported log is judged as it was


def test_off_policies_weighs_each_judged_row_by_its_probability_among_sends_and_hold_outs(trained):
    """The judge of the gate and `nextbest evaluate` reads the service's P(no contact) and P(held out): with every
    judged decision logged as one the policy would send, "nobody"'s IPS (it matches the hold-outs only, each weighed
    by the held-out share among those decisions) is the hold-outs' mean reward, SNIPS's, exactly; the "no action"
    rows (every action closed) are not judged and do not change that share."""
    from nextbest.features.store import read_table
    from nextbest.pipelines.evaluate import ModelPolicy, load_period, off_policies
    from nextbest.pipelines.offpolicy import decisions_since

    world, tables = load_period(trained)
    period = world.sample(300, seed=3)
    snapshots = read_table(trained, "behaviour")["event_timestamp"]
    _, logged = decisions_since(tables, snapshots, set(period.user_ids))
    contacts = logged["contacts"].reset_index(drop=True)
    control = contacts["channel"].isna()
    assert control.sum() >= 20 and (contacts.loc[control, "propensity"] < 0.5).all()
    planted = contacts[control].head(60).assign(contact_id=lambda d: "na-" + d["contact_id"].astype(str),
                                                 variant="no_action", propensity=0.8)
    n_o, n_c = len(period.offers), len(period.channels)
    ev = np.tile(np.arange(n_o * n_c, dtype=float).reshape(1, n_o, n_c) / (n_o * n_c), (period.n_users, 1, 1))
    policy = ModelPolicy("nobody", -1 - ev, np.full((period.n_users, n_c), 10))  # no contact on every decision
    seen = pd.concat([tables["contacts"], planted], ignore_index=True)
    plain = off_policies(trained, {policy.name: policy}, period, logged, seen=seen)[policy.name].set_index("method")
    log = pd.concat([contacts.assign(no_contact_propensity=0.1, holdout_propensity=0.1),
                     planted.assign(no_contact_propensity=1.0, holdout_propensity=0.1)], ignore_index=True)
    judged = off_policies(trained, {policy.name: policy}, period, {**logged, "contacts": log},
                          seen=seen)[policy.name].set_index("method")
    assert judged.loc["IPS", "n"] == plain.loc["IPS", "n"]  # the "no action" rows are not judged
    assert judged.loc["IPS", "value"] != pytest.approx(plain.loc["IPS", "value"])
    assert judged.loc["IPS", "value"] == pytest.approx(judged.loc["SNIPS", "value"])  # the weights sum to n
    assert judged.loc["IPS", "users"] < judged.loc["IPS", "n"]  # clustered by user: fewer users than decisions
