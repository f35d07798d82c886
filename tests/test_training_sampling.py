"""Training row sets past a size are sampled, the same share of every label stratum, seeded, and the MLflow run says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.training.datasets import CONTACTS, STRATA, Sampling, contact_rows, historical, stratified_sample


def test_every_stratum_keeps_the_same_share_and_a_rare_label_survives():
    rng = np.random.default_rng(0)
    n = 10_000
    rows = pd.DataFrame({"treated": (rng.random(n) < 0.9).astype(int), "converted": 0, "x": np.arange(n)})
    rows.loc[rng.choice(n, 30, replace=False), "converted"] = 1
    rows.loc[rows.index[(rows["treated"] == 0)][:1], "converted"] = 1  # a stratum of one row
    out, record = stratified_sample(rows, ("treated", "converted"), 1_000, seed=3)
    assert len(out) == pytest.approx(1_000, abs=3) and record["sample_rows"] == str(len(out))
    assert record == {**record, "sample_rate": "0.1", "sample_strata": "treated,converted", "sample_seed": "3",
                      "sample_of_rows": "10000"}
    before, after = rows.value_counts(["treated", "converted"]), out.value_counts(["treated", "converted"])
    assert (after == np.maximum(np.rint(before * 0.1), 1).astype(int)).all()  # the share of each stratum, at least one
    assert out["x"].is_unique and out["x"].is_monotonic_increasing  # rows of the input, in its order
    again, _ = stratified_sample(rows, ("treated", "converted"), 1_000, seed=3)
    other, _ = stratified_sample(rows, ("treated", "converted"), 1_000, seed=4)
    assert again["x"].tolist() == out["x"].tolist() and other["x"].tolist() != out["x"].tolist()
    same, record = stratified_sample(rows, ("treated", "converted"), 10_000, seed=3)
    assert same is rows and record["sample_rate"] == "1.0"


def test_a_sampled_shared_join_is_the_point_in_time_join_of_the_kept_rows(built):
    from nextbest.features.store import feature_store
    from nextbest.training import channel, propensity
    from nextbest.training.jobs import read_raw_tables, shared_joins

    store, raw = feature_store(built), read_raw_tables(built)
    rows = contact_rows(raw, 7)
    shared = shared_joins(store, ["conversion", "channel"], Sampling(max_rows=300, seed=5))
    data = propensity.build_frame(store, raw, shared=shared)
    record = shared.sampled[CONTACTS]
    assert record["sample_of_rows"] == str(len(rows)) and 0 < float(record["sample_rate"]) < 1
    assert record["sample_strata"] == ",".join(STRATA[CONTACTS])
    kept = rows[rows["contact_id"].isin(data.frame["contact_id"])]
    assert int(record["sample_rows"]) == pytest.approx(300, abs=len(rows.value_counts(list(STRATA[CONTACTS]))))
    # The kept rows carry exactly the features a direct join of them gives (same FeatureService, same times).
    direct = historical(store, kept[kept["treated"] == 1], "conversion_v1")
    pd.testing.assert_frame_equal(data.frame.drop(columns="label").reset_index(drop=True), direct.reset_index(drop=True),
                                  check_like=True)
    assert len(channel.build_frame(store, raw, shared=shared).frame) == len(data.frame)  # one sample for both models


def test_a_sampled_training_run_records_its_sampling_in_mlflow(trained, tmp_path):
    from mlflow import MlflowClient

    from nextbest.training.jobs import TrainConfig, train_model
    from tests.conftest import copy_home

    home = copy_home(trained, tmp_path / "home")
    result = train_model(home, "channel", TrainConfig(trials=1, sample_rows=3_000, seed=11))
    tags = MlflowClient(home.tracking_uri).get_run(result.run_id).data.tags
    assert float(tags["sample_rate"]) < 1 and tags["sample_seed"] == "11"
    assert tags["sample_strata"] == ",".join(STRATA[CONTACTS]) and int(tags["sample_of_rows"]) > 3_000
    assert int(tags["train_rows"]) + int(tags["holdout_rows"]) == result.rows <= int(tags["sample_rows"])
