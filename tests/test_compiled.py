"""Compiled scoring on real trained champions: the same inputs and scores as training's pandas path, model
contracts checked at load, refresh by version, and a failing model degrading an answer instead of a 5xx."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from nextbest.features.settings import Settings
from nextbest.features.store import apply, read_table
from nextbest.serving import engine
from nextbest.serving.runtime import Runtime
from nextbest.serving.schemas import DecideRequest
from nextbest.training.compiled import Rows
from nextbest.training.scorers import (
    AveragedBooster,
    BlendScorer,
    BoosterScorer,
    FunnelUpliftScorer,
    LinearScorer,
    SLearnerScorer,
)
from tests.conftest import TRAINED_NOW, copy_home

DECISION_MODELS = {"conversion", "uplift", "send_time", "churn"}
NOW = TRAINED_NOW
pytestmark = pytest.mark.usefixtures("clock_at_trained_now")  # the server clock stands at NOW


@pytest.fixture(scope="module")
def users(trained_runtime, trained):
    """300 real users' online features, with hostile values planted: missing numbers, unknown and missing
    categories, a feature absent from the request altogether."""
    ids = read_table(trained, "profile")["user_id"].astype(str).head(300).tolist()
    feats, known, degraded = trained_runtime.features.fetch(ids)
    assert known.all() and not degraded
    feats = {k: v.copy() for k, v in feats.items()}
    numeric = [k for k, v in feats.items() if v.dtype == np.float64]
    strings = [k for k, v in feats.items() if v.dtype == object and k != "user_id"]
    assert numeric and strings
    for k in numeric[::3]:
        feats[k][::7] = np.nan
    for k in strings:
        feats[k][1::11] = "a value no model has seen"
        feats[k][2::13] = None
    feats.pop(numeric[1])
    return feats


def _hosts(models: engine.ModelSet):
    """Every LightGBM or linear scorer in the champions with its compiled plan: the single models (churn is the
    learner its cross-validation chose) and each uplift arm."""
    for kind, champion in models.models.items():
        compiled = models.compiled[kind]
        if isinstance(champion.model, BoosterScorer | LinearScorer | BlendScorer):
            yield kind, champion.model, compiled.plan
        for arm, plan_owner in getattr(compiled, "fitted", {}).items():
            yield f"{kind}.{arm}", getattr(champion.model, f"{arm}_"), plan_owner.plan


def test_the_demo_models_are_all_compiled(trained_runtime):
    models = trained_runtime.models.current
    assert set(models.models) == DECISION_MODELS, trained_runtime.models.error
    assert set(models.compiled) == DECISION_MODELS


def test_compiled_inputs_equal_the_encoders_frames_value_for_value(trained_runtime, users):
    models, config = trained_runtime.models.current, trained_runtime.config.current(time.monotonic())
    grid = engine.request_grid(config)
    n_u, n_cells = len(users["user_id"]), grid.n_offers * grid.n_channels
    rows = np.repeat(np.arange(n_u), n_cells)
    cells = np.tile(np.arange(n_cells), n_u)
    hours = np.random.default_rng(0).integers(0, 24, len(rows)).astype("float64")
    hours[::17] = np.nan  # an hour the caller could not tell
    checked = 0
    for label, scorer, plan in _hosts(models):
        kind = label.split(".")[0]
        x = Rows(engine.user_columns(users), rows, cells, None if kind == "churn" else hours, grid)
        frame = models.frame(kind, users, rows, grid.request(cells, x.hours, engine.REQUEST_COLUMNS[kind]))
        compiled, reference = plan.codes(x), scorer.encoder_.codes(frame)
        assert compiled.shape == reference.shape
        np.testing.assert_array_equal(compiled, reference, err_msg=label)  # NaN where NaN, else bit for bit
        seen = ~np.isnan(reference).all(axis=0)
        assert np.isnan(reference).any() and np.nanstd(reference[:, seen], axis=0).max() > 0  # the planted values are in
        checked += 1
    assert checked >= 5  # conversion, churn and the funnel's arms


def test_compiled_scores_equal_the_pandas_path_for_every_decision_model(trained_runtime, users):
    compiled, config = trained_runtime.models.current, trained_runtime.config.current(time.monotonic())
    pandas = compiled.pandas()
    assert not pandas.compiled
    # The send-time model weighs the rhythm clusters by the users' past sends' opens: both paths read them.
    assert compiled.models["send_time"].model.rhythm_open_curves_ is not None
    assert compiled.compiled["send_time"].rhythm_names[-1] == "opens_h21_365d"
    p_open = engine.send_time_scores(compiled, users, config)
    # The compiled send-time model sums its first layer per part (user once, per-row columns per row): float32
    # rounding, not bit for bit (tests/test_fast_scoring.py holds the decisions to the reference).
    np.testing.assert_allclose(p_open, engine.send_time_scores(pandas, users, config), rtol=0, atol=1e-6)
    hours = p_open.argmax(axis=2)
    for got, want in zip(engine.conversion_scores(compiled, users, config, hours),
                         engine.conversion_scores(pandas, users, config, hours), strict=True):
        np.testing.assert_array_equal(got, want)
        assert np.nanstd(got) > 0
    for got, want in zip(engine.funnel_factors(compiled, users, config, hours),
                         engine.funnel_factors(pandas, users, config, hours), strict=True):
        np.testing.assert_array_equal(got, want)
    churn = engine.churn_scores(compiled, users, config)
    np.testing.assert_array_equal(churn, engine.churn_scores(pandas, users, config))
    assert churn.std() > 0 and p_open.std() > 0


def test_decisions_with_the_real_champions_are_not_degraded(trained_runtime, trained):
    ids = read_table(trained, "profile")["user_id"].astype(str).head(50).tolist()
    decisions = [trained_runtime.decide(DecideRequest(user_id=u, now=NOW, dry_run=True)) for u in ids]
    assert all(d["degraded_reasons"] == [] for d in decisions)
    assert all(set(d["model_versions"]) == DECISION_MODELS for d in decisions)
    assert sum(bool(d["actions"]) for d in decisions) > 0


def _copy(trained, tmp_path) -> Settings:
    return copy_home(trained, tmp_path / "home")


def test_a_model_failing_at_predict_time_degrades_the_answer_to_the_rules(trained, tmp_path):
    rt = Runtime(_copy(trained, tmp_path))
    user = read_table(trained, "profile")["user_id"].astype(str).iloc[0]

    class Broken:
        def predict(self, x, num_threads=None):
            raise ValueError("corrupt tree")

    rt.models.current.compiled["conversion"].booster = Broken()
    d = rt.decide(DecideRequest(user_id=user, now=NOW, dry_run=True))
    assert "model_error" in d["degraded_reasons"] and "rule_based_conversion" in d["degraded_reasons"]


def test_a_rebuilt_feature_set_that_no_longer_fits_keeps_the_last_good_models(trained, tmp_path):
    settings = _copy(trained, tmp_path)
    rt = Runtime(settings)
    before = rt.models.current.versions()
    assert set(before) == DECISION_MODELS
    # The churn model reads a behaviour feature; rebuild the table with that feature now text, and apply it.
    read = rt.models.current.models["churn"].model.contract_["inputs"]
    table = read_table(settings, "behaviour")
    feature = next(c for c in read if c in table.columns and read[c] in ("Float64", "Int64"))
    table[feature] = table[feature].astype(str)
    table.to_parquet(settings.feature_dir / "behaviour.parquet", index=False)
    apply(settings)
    assert rt.features.refresh()
    assert rt.models.refresh().versions() == before  # the last good set stays in force
    assert feature in rt.models.error and "retrain" in rt.models.error
    user = read_table(settings, "profile")["user_id"].astype(str).iloc[0]
    assert rt.decide(DecideRequest(user_id=user, now=NOW, dry_run=True))["model_versions"] == before

    cold = Runtime(settings)  # a service started on the changed features: no model it cannot feed
    assert cold.models.current.versions() == {} and feature in cold.models.error
    d = cold.decide(DecideRequest(user_id=user, now=NOW, dry_run=True))
    assert "rule_based_conversion" in d["degraded_reasons"]
    assert cold.ready()[1]["model_error"]


def test_models_are_loaded_only_when_their_champion_moves(trained, tmp_path, monkeypatch):
    from nextbest.training import registry
    from nextbest.training.jobs import TrainConfig, train_model

    settings = _copy(trained, tmp_path)
    loads = []
    real = registry.load_version
    monkeypatch.setattr(registry, "load_version", lambda s, name, v: loads.append(name) or real(s, name, v))
    rt = Runtime(settings)
    assert sorted(loads) == sorted(DECISION_MODELS)  # the channel model is registered too, and not loaded
    assert "channel" in {r["model"] for r in registry.list_versions(settings)}
    loads.clear()
    rt.models.refresh()
    assert loads == []  # nothing moved: nothing downloaded
    run = train_model(settings, "churn", TrainConfig(trials=1))
    registry.promote(settings, "churn", run.version)
    loads.clear()  # training's gate loaded the old champion to compare
    rt.models.refresh()
    assert loads == ["churn"] and rt.models.current.versions()["churn"].endswith(f"/{run.version}")


def test_serving_imports_no_fitting_code(trained):
    code = ("import sys; from nextbest.features.settings import Settings; from nextbest.serving.runtime import Runtime; "
            f"rt = Runtime(Settings(home={str(trained.home)!r})); assert rt.models.current.versions(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna' or m in ('nextbest.training.tabular', "
            "'nextbest.training.tuning', 'nextbest.training.jobs', 'nextbest.training.datasets', 'nextbest.training.uplift', "
            "'nextbest.training.send_time', 'nextbest.training.metrics')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_an_s_learner_compiles_to_its_pandas_scores(trained_runtime, users):
    """The S-learner's "no action" half empties the same columns in the compiled codes as in the frame's."""
    models, config = trained_runtime.models.current, trained_runtime.config.current(time.monotonic())
    label, scorer, _ = next((lab, s, p) for lab, s, p in _hosts(models)
                            if type(s) is BoosterScorer and "offer_id" in s.encoder_.columns)
    kind = label.split(".")[0]
    s_learner = SLearnerScorer(scorer.booster_, scorer.encoder_, scorer.feature_service)  # any model over user + action
    grid = engine.request_grid(config)
    n_u, n_cells = len(users["user_id"]), grid.n_offers * grid.n_channels
    rows, cells = np.repeat(np.arange(n_u), n_cells), np.tile(np.arange(n_cells), n_u)
    hours = np.random.default_rng(1).integers(0, 24, len(rows)).astype("float64")
    x = Rows(engine.user_columns(users), rows, cells, hours, grid)
    frame = models.frame(kind, users, rows, grid.request(cells, x.hours, engine.REQUEST_COLUMNS[kind]))
    compiled = s_learner.compile(models.columns[kind], engine.REQUEST_COLUMNS[kind]).predict(x)
    np.testing.assert_allclose(compiled, s_learner.predict(frame), rtol=0, atol=1e-12)
    assert np.std(compiled) > 0 and len(s_learner.empty_columns) >= 5  # the action's columns and matched ones


def test_an_averaged_control_arm_compiles_to_its_pandas_scores(trained_runtime, users, tmp_path):
    """A funnel whose control arm averages several fits (`UpliftConfig.arm_fits`): the compiled path gives the
    pandas path's numbers, the arm is the mean of its fits, and it loads back from its text models the same."""
    import lightgbm as lgb

    from nextbest.training.registry import Champion

    models, config = trained_runtime.models.current, trained_runtime.config.current(time.monotonic())
    funnel = models.models["uplift"].model
    assert isinstance(funnel, FunnelUpliftScorer)
    first = funnel.control_
    width = len(first.encoder_.columns)
    rng = np.random.default_rng(3)  # a second fit over the same inputs: another booster, other trees
    x = rng.normal(size=(600, width))
    other = lgb.train({"objective": "binary", "num_leaves": 4, "verbosity": -1, "seed": 1},
                      lgb.Dataset(x, (x[:, 0] + rng.normal(size=600) > 1).astype(int)), num_boost_round=8)
    arm = AveragedBooster([first.booster_, other], first.encoder_, first.feature_service)
    averaged = FunnelUpliftScorer(funnel.engage_, funnel.convert_, arm, funnel.feature_service, click=funnel.click_)
    averaged.save(tmp_path / "m")
    loaded = FunnelUpliftScorer.load(tmp_path / "m")
    assert isinstance(loaded.control_, AveragedBooster) and len(loaded.control_.boosters_) == 2
    variant = engine.ModelSet({**models.models, "uplift": Champion("uplift", "averaged", loaded)}, models.columns)
    compiled, pandas = variant.compile(), variant.pandas()
    hours = engine.send_time_scores(models, users, config).argmax(axis=2)
    for got, want in zip(engine.funnel_factors(compiled, users, config, hours),
                         engine.funnel_factors(pandas, users, config, hours), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    grid = engine.request_grid(config)
    n_u = len(users["user_id"])
    rows = Rows(engine.user_columns(users), np.arange(n_u), np.zeros(n_u, dtype=np.int64), np.full(n_u, 10.0), grid)
    got = compiled.compiled["uplift"].fitted["control"].predict(rows)
    codes = compiled.compiled["uplift"].fitted["control"].plan.codes(rows)
    parts = [first.booster_.predict(codes), other.predict(codes)]
    np.testing.assert_allclose(got, np.mean(parts, axis=0), rtol=0, atol=1e-12)
    assert np.abs(parts[0] - parts[1]).max() > 1e-3  # the mean is neither fit's alone
    plain = engine.funnel_factors(models, users, config, hours)[1]
    assert np.nanmax(np.abs(engine.funnel_factors(compiled, users, config, hours)[1] - plain)) > 1e-4


def test_pandas_frame_and_rows_describe_the_same_requests(trained_runtime):
    """The reference path's request columns come from the same grid cells as the compiled path's."""
    config = trained_runtime.config.current(time.monotonic())
    grid = engine.request_grid(config)
    n_c = len(config.channels)
    req = grid.request(np.array([0, n_c + 1]), np.array([3.0, 4.0]), engine.REQUEST_COLUMNS["conversion"])
    assert list(req["offer_id"]) == [config.offers[0].offer_id, config.offers[1].offer_id]
    assert list(req["channel"]) == [config.channels[0].channel, config.channels[1].channel]
    assert list(req["local_hour"]) == [3.0, 4.0]
    assert engine.request_grid(config) is grid
    assert isinstance(pd.DataFrame(req), pd.DataFrame)


@pytest.mark.slow
def test_the_service_over_http_decides_with_the_real_champions(trained, tmp_path):
    import httpx

    from nextbest.pipelines.serve_commands import running_service

    settings = _copy(trained, tmp_path)
    ids = read_table(settings, "profile")["user_id"].astype(str).head(50).tolist()
    with running_service(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        batch = client.post("/decide_batch", json={"user_ids": ids, "dry_run": True}).raise_for_status().json()
        one = client.post("/decide", json={"user_id": ids[0], "dry_run": True}).raise_for_status().json()
        status = client.post("/status", json={}).raise_for_status().json()
    assert all(d["degraded_reasons"] == [] for d in batch["decisions"] + [one])
    assert set(one["model_versions"]) == DECISION_MODELS and status["model_error"] is None
