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
    import json

    from mlflow import MlflowClient

    from nextbest.training.jobs import TrainConfig, quality_refusal, train_model
    from tests.conftest import copy_home

    home = copy_home(trained, tmp_path / "home")
    result = train_model(home, "channel", TrainConfig(trials=1, sample_rows=3_000, seed=11))
    tags = MlflowClient(home.tracking_uri).get_run(result.run_id).data.tags
    assert float(tags["sample_rate"]) < 1 and tags["sample_seed"] == "11"
    assert tags["sample_strata"] == ",".join(STRATA[CONTACTS]) and int(tags["sample_of_rows"]) > 3_000
    assert int(tags["train_rows"]) + int(tags["holdout_rows"]) == result.rows <= int(tags["sample_rows"])
    assert quality_refusal("channel", result.metrics) is None  # trained on a third of the rows, still clearly learns
    # Snapshot rows too: sampled by date x purchase label, and the purchase model still passes its gate.
    bought = train_model(home, "purchase", TrainConfig(trials=1, sample_rows=1_500, seed=11))
    tags = MlflowClient(home.tracking_uri).get_run(bought.run_id).data.tags
    assert tags["sample_strata"] == "event_timestamp,label" and int(tags["sample_of_rows"]) > 1_500
    assert bought.rows == int(tags["sample_rows"]) == sum(k for k, _ in json.loads(tags["sample_counts"]).values())
    assert quality_refusal("purchase", bought.metrics) is None and bought.decision["promoted"]  # no champion yet


def test_training_reads_events_and_contacts_from_their_files_as_it_reads_frames(built):
    """`train` reads events and contacts through DuckDB from their Parquet files (31M and 16M rows at 1M users):
    the same rows, labels, dates and skipped models as from the tables in pandas."""
    from pathlib import Path

    from nextbest.training.churn import ChurnConfig, churn_labels
    from nextbest.training.datasets import snapshot_dates, snapshot_rows
    from nextbest.training.jobs import MODELS, ON_DISK, read_raw_tables, skipped_models
    from nextbest.training.purchase import purchase_labels
    from nextbest.training.validation import repeat_purchase_stats

    frames, files = read_raw_tables(built), read_raw_tables(built, ON_DISK)
    assert isinstance(files["events"], Path) and isinstance(files["contacts"], Path)
    pd.testing.assert_frame_equal(contact_rows(files, 7), contact_rows(frames, 7))
    dates = snapshot_dates(files["events"], 14, count=3)
    assert dates.equals(snapshot_dates(frames["events"], 14, count=3))
    rows = snapshot_rows(frames["users"], dates)
    bought = purchase_labels(rows, files["events"], 14)
    assert 0 < bought.mean() < 1 and bought.tolist() == purchase_labels(rows, frames["events"], 14).tolist()
    churned = churn_labels(rows, files["events"], ChurnConfig(horizon_days=14))
    assert [a.tolist() for a in churned] == [a.tolist() for a in churn_labels(rows, frames["events"], ChurnConfig(horizon_days=14))]
    # a row's purchase history (BG/NBD's summary) counts the same purchases from the file
    from nextbest.training.activity import purchases

    pd.testing.assert_frame_equal(repeat_purchase_stats(rows, purchases(files["events"])),
                                  repeat_purchase_stats(rows, frames["events"]))
    assert skipped_models(files, list(MODELS)) == skipped_models(frames, list(MODELS))


def test_snapshot_rows_are_sampled_by_date_and_label_and_the_counts_recorded(built):
    """Purchase and churn share one sampled snapshot row set: stratified by date and by the label (known before the
    join, from the events), each stratum's count recorded; churn reads its own labels on the same kept rows."""
    import json

    from nextbest.features.store import feature_store
    from nextbest.training import churn, purchase
    from nextbest.training.datasets import SNAPSHOTS, snapshot_dates, snapshot_rows
    from nextbest.training.jobs import ON_DISK, read_raw_tables, shared_joins

    store, raw = feature_store(built), read_raw_tables(built, ON_DISK)
    config = purchase.PurchaseConfig(horizon_days=14, dates=3)
    dates = snapshot_dates(raw["events"], 14, count=3, available=purchase.feature_snapshots(store))
    rows = snapshot_rows(raw["users"], dates)
    full = purchase.purchase_labels(rows, raw["events"], 14)
    shared = shared_joins(store, ["purchase", "churn"], Sampling(max_rows=len(rows) // 3, seed=4))
    data = purchase.build_frame(store, raw, config, shared)
    record = shared.sampled[SNAPSHOTS]
    assert record["sample_strata"] == "event_timestamp,label" and record["sample_of_rows"] == str(len(rows))
    counts = json.loads(record["sample_counts"])
    assert len(counts) == len(dates) * 2 and sum(k for k, _ in counts.values()) == len(data.frame)
    rate = float(record["sample_rate"])
    assert all(kept == max(round(of * rate), 1) for kept, of in counts.values())
    assert abs(data.y.mean() - full.mean()) < len(counts) / len(data.frame)  # the label's share, to rounding
    assert (data.frame.groupby("event_timestamp").size() > 0).all() and len(data.frame) < len(rows) // 2
    again = churn.build_frame(store, raw, churn.ChurnConfig(horizon_days=14, dates=3), shared)
    label, eligible = churn.churn_labels(data.frame, raw["events"], churn.ChurnConfig(horizon_days=14))
    assert again.y.tolist() == label[eligible].tolist()  # churn's labels, on the kept rows that were active
    assert len(again.frame) == int(eligible.sum())
