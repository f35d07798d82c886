"""The closed loop's pipelines: policy replay under the contact rules, and the resumable retraining pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.features.ingest import write_raw
from nextbest.features.settings import Settings
from nextbest.simulation import WorldConfig, simulate
from nextbest.simulation.policies import Blast, NoContact, OraclePolicy, RandomPolicy, best_selling_order
from nextbest.simulation.replay import Choice, Period, ReplayConfig, Rules, replay


@pytest.fixture(scope="module")
def world():
    return simulate(WorldConfig(n_users=1_500, seed=5))


def test_baselines_obey_the_rules_and_the_oracle_wins(world):
    period = Period.from_tables(world.tables, world.truth)
    config = ReplayConfig(days=7)
    blast = Blast(tuple(best_selling_order(world.tables, period.offers)), tuple(period.channels["cost"]))
    results = {p.name: replay(period, p, config).metrics for p in (NoContact(), RandomPolicy(), blast, OraclePolicy(period))}
    assert all(m["violations"] == 0 for m in results.values())
    assert results["no contact"]["incremental_revenue"] == 0
    assert results["oracle"]["incremental_revenue"] > 2 * results["blast"]["incremental_revenue"]
    assert results["oracle"]["incremental_revenue"] > results["random"]["incremental_revenue"]
    # weekly cap: nobody gets more than per_user_per_week contacts in the 7 days
    assert results["blast"]["contacts"] <= period.n_users * Rules().per_user_per_week


def test_a_policy_that_breaks_the_rules_is_caught(world):
    """The replay does not repair choices: quiet hours and consent breaches are counted."""
    period = Period.from_tables(world.tables, world.truth)

    class Reckless:
        name = "reckless"

        def choose(self, s, rng):
            n = len(s.recent)
            no_consent = np.argmin(period.consent, axis=1)  # a channel without consent where there is one
            return Choice(np.zeros(n, dtype=int), no_consent, np.full(n, 3), np.ones(n), np.ones(n))

    sends = replay(period, Reckless(), ReplayConfig(days=2)).sends
    assert sends["broke_quiet_hours"].any()  # 03:00 local is quiet for push, sms and wechat
    assert sends["broke_consent"].sum() == (~period.consent[sends["user_idx"], sends["channel"].map(
        {c: i for i, c in enumerate(period.channels["channel"])})]).sum()
    assert sends["violation"].sum() > 0


def test_the_replay_takes_the_services_caps_and_counts_a_repeated_offer(world):
    """One set of caps: the replay's rules are the operator config's, and an offer sent twice inside its window breaks
    the per-offer cap the service enforces (the situation a policy sees already leaves it out)."""
    from nextbest.serving.config import default_config

    caps = default_config().caps
    rules = Rules.of(caps)
    assert (rules.per_user_per_week, rules.per_user_channel_per_week, rules.per_offer, rules.offer_window_days) == (
        caps.per_user_week, caps.per_channel_week, caps.per_offer, caps.offer_window_days)
    period = Period.from_tables(world.tables, world.truth).sample(300, seed=1)

    class Stubborn:
        """The same offer to each user every day (its first eligible one on day 0), on an allowed channel at noon."""

        name = "stubborn"
        offer: np.ndarray | None = None
        hidden = 0  # users whose repeated offer the situation no longer offered

        def choose(self, s, rng):
            n = len(s.recent)
            if self.offer is None:
                self.offer = np.where(s.eligible.any(axis=1), s.eligible.argmax(axis=1), -1)
            else:
                self.hidden += int((~s.eligible[self.sent, self.offer[self.sent]]).sum())
            usable = s.allowed & s.hour_ok[:, 12][None, :]
            offer = np.where(usable.any(axis=1), self.offer, -1)
            self.sent = np.flatnonzero(offer >= 0)
            return Choice(offer, usable.argmax(axis=1), np.full(n, 12), np.ones(n), np.ones(n))

    stubborn = Stubborn()
    sends = replay(period, stubborn, ReplayConfig(days=3, rules=rules)).sends
    repeated = sends.duplicated(["user_idx", "offer_id"])
    assert repeated.sum() > 50 and stubborn.hidden >= repeated.sum()
    assert sends.loc[repeated, "broke_cap"].all() and not sends.loc[~repeated, "violation"].any()
    # without a per-offer cap the same sends break nothing
    assert replay(period, Stubborn(), ReplayConfig(days=3, rules=Rules(per_offer=None))).metrics["violations"] == 0


@pytest.mark.slow
def test_retrain_resumes_after_a_failed_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    from nextbest.features.store import read_table
    from nextbest.pipelines import retrain as pipeline
    from nextbest.training.registry import list_versions

    settings = Settings(home=tmp_path / "home")
    world = simulate(WorldConfig(n_users=800, seed=2))
    write_raw(world.tables, settings.raw_dir)
    world.truth.save(settings.truth_dir)
    config = pipeline.RetrainConfig(trials=1, evaluate=False, models=("conversion", "churn"))

    def broken(settings, config, state):
        raise RuntimeError("online store unreachable")

    monkeypatch.setitem(pipeline._RUN, "materialize", broken)
    with pytest.raises(RuntimeError, match="unreachable"):
        pipeline.retrain(settings, config)
    state = pipeline.load_state(settings)
    assert state["status"] == "failed at materialize"
    assert [s for s, v in state["steps"].items() if v["status"] == "done"] == ["ingest", "build", "apply"]
    assert len(read_table(settings, "behaviour")) > 0  # the built features are in place
    assert list_versions(settings) == []  # no model was touched

    monkeypatch.undo()
    built_at = state["steps"]["build"]["at"]
    state = pipeline.retrain(settings, config)
    assert state["status"] == "done" and state["steps"]["build"]["at"] == built_at  # resumed, not rebuilt
    assert all(m["promoted"] for m in state["steps"]["train"]["models"].values())  # first models become champions

    # A fresh run on the same data: each challenger ties its champion on the same holdout, so none is promoted.
    again = pipeline.retrain(settings, config, resume=False)
    assert again["run_id"] != state["run_id"]
    assert not any(m["promoted"] for m in again["steps"]["train"]["models"].values())


def _gate_config():
    from nextbest.pipelines import retrain as pipeline

    # the learner choice has its own tests (tests/test_uplift_learners.py); here the gate
    return pipeline.RetrainConfig(trials=1, models=(*pipeline.POLICY_MODELS, "purchase"), min_matched=20,
                                  uplift_learner="funnel")


@pytest.fixture(scope="module")
def first_retrain(tmp_path_factory):
    """A world's first retrain (no champion yet), done once: each variant below continues from a copy of it.
    The world's truth is kept aside; the first run does not need it (no champion to judge)."""
    from nextbest.pipelines import retrain as pipeline

    settings = Settings(home=tmp_path_factory.mktemp("gate") / "home")
    world = simulate(WorldConfig(n_users=800, seed=2))
    write_raw(world.tables, settings.raw_dir)
    truth = tmp_path_factory.mktemp("gate-truth")
    world.truth.save(truth)
    return settings, truth, pipeline.retrain(settings, _gate_config())


@pytest.mark.slow
@pytest.mark.parametrize("simulated", [True, False], ids=["simulated", "company-logs"])
def test_the_policy_gate_judges_the_models_the_policy_uses_by_its_value(tmp_path, simulated, first_retrain):
    import dataclasses
    import shutil

    from mlflow import MlflowClient

    from nextbest.pipelines import retrain as pipeline
    from nextbest.pipelines.evaluate import champion_set
    from nextbest.training.registry import MODEL_NAMES, policy_gate
    from tests.conftest import copy_home

    source, truth, first = first_retrain
    settings = copy_home(source, tmp_path / "home")
    if simulated:  # without a truth, the gate has only the company's logs: off-policy estimates
        shutil.copytree(truth, settings.truth_dir)
    config = _gate_config()
    assert first["status"] == "done"
    assert all(m["promoted"] and not m["deferred"] for m in first["steps"]["train"]["models"].values())  # no champion yet
    assert first["steps"]["promote"]["promoted"] == {}
    champions = champion_set(settings).versions()
    if simulated:  # the evaluation: the NBA and the baselines against the oracle and the history oracle
        from nextbest.pipelines.evaluate import HISTORY_ORACLE, evaluate_policies

        table, _ = evaluate_policies(settings, ReplayConfig(days=7), users=None, ope_users=None)
        assert (table["violations"] == 0).all()
        revenue = table["incremental_revenue"]
        assert revenue["random"] < revenue[HISTORY_ORACLE] < revenue["oracle"]
        assert table["share_of_history_oracle"].to_numpy() == pytest.approx(revenue.to_numpy() / revenue[HISTORY_ORACLE])

    # The same data again: the challengers equal the champions, so the policy they make is worth exactly as much.
    again = pipeline.retrain(settings, config, resume=False)
    trained = again["steps"]["train"]["models"]
    assert {n for n, m in trained.items() if m["deferred"]} == set(pipeline.POLICY_MODELS)
    assert not trained["purchase"]["deferred"] and not trained["purchase"]["promoted"]  # holdout gate: a tie
    judged = again["steps"]["evaluate"]
    assert set(judged["challengers"]) == set(pipeline.POLICY_MODELS)
    assert judged["decision"]["by"] == ("simulation" if simulated else "off-policy")
    policies = judged["policies"]
    assert policies["challengers"]["dr"] == pytest.approx(policies["champions"]["dr"])
    assert policies["challengers"]["dr_diff"] == 0 and policies["challengers"]["dr_diff_high"] == 0  # paired: exactly 0
    assert policies["champions"]["matched"] >= 20
    if simulated:
        assert policies["challengers"]["incremental_revenue"] == pytest.approx(policies["champions"]["incremental_revenue"])
        assert policies["challengers"]["revenue_diff_low"] == policies["challengers"]["revenue_diff_high"] == 0  # paired
        assert policies["champions"]["violations"] == 0
    assert judged["decision"]["promoted"] is False and again["steps"]["promote"]["promoted"] == {}
    assert champion_set(settings).versions() == champions
    tracking = MlflowClient(tracking_uri=settings.tracking_uri)
    version = tracking.get_model_version(MODEL_NAMES["uplift"], trained["uplift"]["version"])
    assert tracking.get_run(version.tags["run_id"]).data.tags["gate_decision"] == "kept champion (policy gate)"

    if not simulated:  # too few logged decisions match a policy's choice: each challenger falls back to its holdout
        # the same challengers judged again (evaluate and promote rerun, nothing retrained)
        state = pipeline.load_state(settings)
        for step in ("evaluate", "promote"):
            state["steps"].pop(step)
        state["status"] = "failed at evaluate"
        pipeline._save(settings, state)
        thin = pipeline.retrain(settings, dataclasses.replace(config, min_matched=10**9))
        assert thin["run_id"] == again["run_id"]
        decision = thin["steps"]["evaluate"]["decision"]
        assert decision["by"] == "holdout" and "each challenger judged on its holdout" in decision["reason"]
        better = {n for n, m in thin["steps"]["train"]["models"].items() if m.get("better_on_holdout")}
        assert set(decision["promote"]) == better and set(thin["steps"]["promote"]["promoted"]) == better
        # a log without the logging policy's probabilities cannot be evaluated off-policy: a message says why
        from nextbest.features.contract import TABLES
        from nextbest.features.ingest import read_raw
        from nextbest.pipelines.evaluate import judge_model_sets

        tables = {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}
        # The contract's optional columns and the optional channels table left out: the gate still judges (channels
        # as the log used them, no quiet hours, offers valid throughout), out of fold, the reward in the label's window.
        bare = {k: v for k, v in tables.items() if k != "channels"}
        bare["offers"] = bare["offers"].drop(columns=["valid_from", "valid_to", "eligibility"], errors="ignore")
        write_raw(bare, settings.raw_dir)
        judged_plain = judge_model_sets(settings, {"champions": champion_set(settings)})
        plain = judged_plain.loc["champions"]
        assert plain["matched"] > 0 and plain["dr_low"] < plain["dr"] < plain["dr_high"] and 0 < plain["dr"] < 1
        # A shrunk uplift champion is judged with its raw argmax beside it (a simulated log has too many actions
        # for the automatic shrinkage, so one is attached): the argmax is the unshrunk champion, to the digit.
        from nextbest.training.shrinkage import Shrinkage

        assert list(judged_plain.index) == ["champions"]
        shrunk_set = champion_set(settings)
        actions = (tables["contacts"]["offer_id"].astype(str) + " @ " + tables["contacts"]["channel"].astype(str)).unique()
        shrunk_set.models["uplift"].model.shrinkage_ = Shrinkage(0.0, {a: 0.01 for a in actions})
        both = judge_model_sets(settings, {"champions": shrunk_set})
        assert list(both.index) == ["champions", "champions (argmax)"]
        assert both.loc["champions (argmax)", "dr"] == pytest.approx(plain["dr"])
        assert both.loc["champions", "dr"] != pytest.approx(plain["dr"])  # strength 0: one fixed ranking for everyone
        write_raw({**tables, "contacts": tables["contacts"].drop(columns="propensity")}, settings.raw_dir)
        with pytest.raises(ValueError, match="no `propensity`"):
            judge_model_sets(settings, {"champions": champion_set(settings)})

    # A better policy is promoted as a set.
    changed = policy_gate(settings, judged["challengers"], judged["challengers"], {**judged["decision"], "promoted": True})
    assert {n: new for n, (_, new) in changed.items()} == judged["challengers"]
    after = champion_set(settings).versions()
    assert all(after[n] == f"{n}/{v}" for n, v in judged["challengers"].items())
