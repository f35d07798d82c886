"""Model and data monitoring: a planted shift in one feature raises an alert (metric, log line, blocked promotion),
an unshifted rerun raises none; calibration figures against hand-computed answers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.monitoring.drift import calibration, psi
from nextbest.monitoring.monitor import open_alerts, run_monitor
from nextbest.pipelines.cli import app


def _behaviour(seed: int, shift: float) -> pd.DataFrame:
    """Two weekly snapshots 28 days apart of 3,000 users; `shift` moves `revenue_90d` up in the later one only."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, ts in enumerate(pd.to_datetime(["2026-10-01", "2026-10-29"], utc=True)):
        n = 3000
        parts.append(pd.DataFrame({
            "user_id": [f"u{i}" for i in range(n)], "event_timestamp": ts,
            "purchases_90d": rng.poisson(2.0, n), "revenue_90d": rng.gamma(2.0, 30.0, n) + (shift * 60.0 if k else 0),
            "recency_days": rng.exponential(20.0, n), "open_rate_email": rng.beta(2, 8, n),
            "lifecycle_stage": rng.choice(["lead", "customer", "intent_lead"], n, p=[.5, .3, .2]),
        }))
    return pd.concat(parts, ignore_index=True)


def _home(tmp_path, shift: float) -> Settings:
    settings = Settings(home=tmp_path / "home")
    settings.feature_dir.mkdir(parents=True)
    _behaviour(seed=3, shift=shift).to_parquet(settings.feature_dir / "behaviour.parquet")
    return settings


def test_a_planted_shift_in_one_feature_is_flagged_and_only_that_one(tmp_path, caplog):
    settings = _home(tmp_path, shift=0.5)
    with caplog.at_level(logging.WARNING, logger="nextbest.monitor"):
        result = run_monitor(settings)
    assert [(a["subject"], a["name"]) for a in result["alerts"]] == [("behaviour", "revenue_90d")]
    assert "monitoring alert: behaviour revenue_90d psi" in caplog.text
    prom = (settings.home / "monitoring" / "metrics.prom").read_text()
    assert 'nextbest_monitor_alerts{metric="psi"} 1' in prom
    assert 'nextbest_feature_psi{subject="behaviour",feature="revenue_90d"}' in prom
    assert open_alerts(settings.home)[0]["name"] == "revenue_90d"


def test_an_unshifted_rerun_raises_no_alert(tmp_path):
    settings = _home(tmp_path, shift=0.0)
    result = run_monitor(settings)
    assert result["alerts"] == []
    psis = {r["feature"]: r["psi"] for r in result["drift"]["behaviour"]}
    assert set(psis) == {"purchases_90d", "revenue_90d", "recency_days", "open_rate_email", "lifecycle_stage"}
    assert max(psis.values()) < 0.05  # sampling noise only


def test_an_open_alert_blocks_a_promotion_by_hand(tmp_path, monkeypatch):
    settings = _home(tmp_path, shift=0.5)
    run_monitor(settings)
    monkeypatch.setenv("NEXTBEST_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["promote", "conversion"])
    assert result.exit_code == 2
    assert "open monitoring alert" in result.output and "--ignore-alerts" in result.output
    assert "Traceback" not in result.output


def test_psi_of_a_known_split_and_of_missing_values():
    ref = np.repeat([0.0, 1.0], 500)
    cur = np.repeat([0.0, 1.0], [250, 750])
    # two bins: 50/50 -> 25/75: (0.25-0.5) ln(0.5) + (0.75-0.5) ln(1.5)
    assert psi(ref, cur, bins=2) == pytest.approx(-0.25 * np.log(0.5) + 0.25 * np.log(1.5), rel=1e-3)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    half_missing = np.where(np.arange(1000) % 2 == 0, np.nan, ref)
    assert psi(ref, half_missing) > 0.2  # a feature that starts going missing has shifted


def test_calibration_against_hand_computed_answers():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    out = calibration(p, y, bins=10)
    # bin 1: mean p 0.1, rate 0.5 (|0.4| x 1/2); bin 9: mean p 0.9, rate 1.0 (|0.1| x 1/2)
    assert out["ece"] == pytest.approx(0.25)
    assert out["brier"] == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert out["reliability"]["count"].tolist() == [2, 2]


def test_the_grafana_monitoring_dashboard_reads_the_metrics_the_monitor_writes(tmp_path):
    import json
    import re
    import shutil
    import subprocess
    from pathlib import Path

    import yaml

    from nextbest.serving.metrics import metrics

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs it (apt-get install prometheus)")
    service = set()  # the decision service's own sample names (the degraded share reads them)
    for collector in vars(metrics()).values():
        for family in collector.collect():
            service |= {family.name + s for s in {"counter": ["_total"]}.get(family.type, [""])}

    settings = _home(tmp_path, shift=0.5)
    run_monitor(settings)
    written = {line.split("{")[0].split(" ")[0] for line in
               (settings.home / "monitoring" / "metrics.prom").read_text().splitlines() if line and line[0] != "#"}
    written |= {"nextbest_calibration_ece", "nextbest_calibration_brier", "nextbest_model_auc"}  # declared; samples once labels arrive
    dash = json.loads((Path(__file__).resolve().parents[1] / "deploy/grafana/dashboards/nextbest-monitoring.json")
                      .read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(nextbest_[a-z0-9_]+)\b", " ".join(exprs)))
    assert used and used <= written | service, used - written - service
    rules = {"groups": [{"name": "m", "rules": [{"record": f"nextbest:monitoring_{i}", "expr": e}
                                                 for i, e in enumerate(exprs)]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def _logs(predicted: float, rate: float, n: int = 400, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n decided actions 10 days before the log's end with p_convert `predicted`, a share `rate` reported converted."""
    rng = np.random.default_rng(seed)
    at = "2026-11-10T09:00:00+00:00"
    decisions = [{"decision_id": f"d{i}", "at": at, "user_id": "x", "actions": [
        {"offer_id": "o1", "channel": "email", "send_at": at, "propensity": 1.0, "expected_value": 1.0,
         "p_convert": predicted}]} for i in range(n)]
    outcomes = [{"decision_id": f"d{i}", "outcome": "converted", "offer_id": "o1", "channel": "email",
                 "at": "2026-11-12T09:00:00+00:00"} for i in range(n) if rng.random() < rate]
    outcomes.append({"decision_id": "late", "outcome": "opened", "offer_id": "o1", "channel": "email",
                     "at": "2026-11-21T00:00:00+00:00"})  # the log's end: the actions' 7-day windows are closed
    return decisions, outcomes


def test_calibration_against_reported_conversions_alerts_only_when_off(tmp_path, caplog):
    import json

    from nextbest.monitoring.monitor import logged_calibration
    from nextbest.serving.decision_log import DecisionLog

    good = logged_calibration(*_logs(predicted=0.2, rate=0.2))
    assert good["actions"] == 400 and good["ece"] < 0.05
    off = logged_calibration(*_logs(predicted=0.5, rate=0.2))
    assert off["ece"] == pytest.approx(0.5 - off["reliability"]["observed_rate"].iloc[0]) and off["ece"] > 0.2
    assert logged_calibration(*_logs(predicted=0.5, rate=0.2, n=50)) is None  # too few labelled actions

    settings = Settings(home=tmp_path / "home")
    decisions, outcomes = _logs(predicted=0.5, rate=0.2)
    log = DecisionLog(settings.log_dir)  # written as the service writes them (pseudonymised user ids)
    log.decisions(decisions)
    for o in outcomes:
        log.outcome({**o, "user_id": "x"})
    with caplog.at_level(logging.WARNING, logger="nextbest.monitor"):
        result = run_monitor(settings)
    # a constant prediction is off by 0.3 and ranks no one: both alerts
    assert [(a["subject"], a["metric"]) for a in result["alerts"]] == [("conversion", "ece"), ("conversion", "auc")]
    assert "monitoring alert: conversion conversion ece" in caplog.text
    assert 'nextbest_calibration_ece{subject="conversion"}' in (settings.home / "monitoring" / "metrics.prom").read_text()
    saved = json.loads((settings.home / "monitoring" / "latest.json").read_text())
    assert saved["calibration"]["conversion"]["actions"] == 400


def _ranked_logs(weeks: list[bool], n: int = 400, seed: int = 1) -> tuple[list[dict], list[dict]]:
    """n actions per week (weeks starting Monday 2026-10-05); in a week marked True the model's p_convert ranks who
    converts (converters drawn with probability p), in a False week conversions ignore p."""
    rng = np.random.default_rng(seed)
    decisions, outcomes = [], []
    for w, informative in enumerate(weeks):
        at = (pd.Timestamp("2026-10-06T09:00Z") + pd.Timedelta(weeks=w)).isoformat()
        for i in range(n):
            p = float(rng.uniform(0.05, 0.6))
            decisions.append({"decision_id": f"d{w}-{i}", "at": at, "user_id": "x", "actions": [
                {"offer_id": "o1", "channel": "email", "send_at": at, "propensity": 1.0, "expected_value": 1.0,
                 "p_convert": p}]})
            if rng.random() < (p if informative else 0.3):
                outcomes.append({"decision_id": f"d{w}-{i}", "outcome": "converted", "offer_id": "o1",
                                 "channel": "email", "at": at})
    outcomes.append({"decision_id": "late", "outcome": "opened", "offer_id": "o1", "channel": "email",
                     "at": (pd.Timestamp("2026-10-06T09:00Z") + pd.Timedelta(weeks=len(weeks) + 1)).isoformat()})
    return decisions, outcomes


def test_auc_over_time_per_week_and_an_alert_when_the_model_stops_ranking(tmp_path):
    from nextbest.monitoring.monitor import logged_calibration
    from nextbest.serving.decision_log import DecisionLog

    weekly = logged_calibration(*_ranked_logs([True, True]))["auc_by_week"]
    assert [w["week"] for w in weekly] == ["2026-10-05", "2026-10-12"] and all(w["actions"] == 400 for w in weekly)
    assert all(w["auc"] > 0.65 for w in weekly)
    decayed = logged_calibration(*_ranked_logs([True, False]))["auc_by_week"]
    assert decayed[0]["auc"] > 0.65 and abs(decayed[1]["auc"] - 0.5) < 0.1

    for weeks, alerted in (([True, True], False), ([True, False], True)):
        settings = Settings(home=tmp_path / f"home{len(weeks)}{weeks[-1]}")
        log = DecisionLog(settings.log_dir)
        decisions, outcomes = _ranked_logs(weeks)
        log.decisions(decisions)
        for o in outcomes:
            log.outcome({**o, "user_id": "x"})
        found = [a for a in run_monitor(settings)["alerts"] if a["metric"] == "auc"]
        assert bool(found) is alerted
        assert 'nextbest_model_auc{subject="conversion"}' in (settings.home / "monitoring" / "metrics.prom").read_text()


def test_open_alerts_hold_every_automatic_promotion_too(tmp_path, monkeypatch):
    """The one block: training's holdout gate and retrain's policy gate refuse while alerts are open; the setting
    turns it off."""
    from nextbest.monitoring.monitor import promotion_block
    from nextbest.pipelines.retrain import RetrainConfig, _promote

    settings = _home(tmp_path, shift=0.5)
    assert promotion_block(settings) is None  # no monitor run yet: nothing blocks
    run_monitor(settings)
    assert "open monitoring alert" in promotion_block(settings)
    state = {"steps": {"evaluate": {"challengers": {"uplift": "2"},
                                    "decision": {"promoted": True, "promote": {"uplift": "2"}, "reason": "better"}}}}
    held = _promote(settings, RetrainConfig(), state)  # refused before the registry is touched
    assert held["promoted"] == {} and "open monitoring alert" in held["refused"]
    monkeypatch.setenv("NEXTBEST_MONITOR_BLOCKS_PROMOTION", "false")
    assert promotion_block(Settings(home=settings.home)) is None
