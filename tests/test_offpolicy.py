"""Off-policy evaluation of a company's experiment log, cross-fitted, against the planted truth."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.pipelines.offpolicy import NO_CONTACT, LogsConfig, logged_actions, policy_values
from tests.test_uplift_learners import planted


def true_value(frame, chosen: np.ndarray) -> float:
    """P(convert) of each user under the chosen action, from the planted model, averaged."""
    f1, f2 = frame["f1"].to_numpy(), frame["f2"].to_numpy()
    lift = np.where(chosen == "A @ email", 0.2 * (f1 > 0), np.where(chosen == "B @ email", 0.2 * (f1 < 0), 0.0))
    return float(np.mean(0.05 + 0.05 * (f2 > 0) + lift))


def test_policies_are_judged_out_of_fold_within_10_percent_of_the_truth():
    data = planted(6_000, seed=5)
    table = policy_values(data, LogsConfig(folds=2, learners=("t",), rounds=60))
    assert set(table.index) == {"t", "everyone: A @ email", "everyone: B @ email", f"nobody ({NO_CONTACT})"}
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
    assert "everyone:" in result.output and "│ t " in result.output
    bad = runner.invoke(app, ["evaluate", "--logs", "--learners", "s"])
    assert bad.exit_code == 2 and "--learners 's'" in bad.output and "Traceback" not in bad.output


def test_off_policy_evaluation_of_logs_does_not_need_the_simulator():
    import ast
    from pathlib import Path

    import nextbest.pipelines.offpolicy as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("simulation" in (name or "") for name in imported), imported
