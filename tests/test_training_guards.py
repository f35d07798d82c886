"""No silent training failures: a model no better than chance is never promoted, labels must name the users,
a training date needs its own feature snapshot, and a company without a contact log still trains what it can."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.pipelines.cli import app
from tests.conftest import build_store, make_raw

runner = CliRunner()


@pytest.fixture(scope="module")
def padded(tmp_path_factory) -> Settings:
    """A store built from users and events only (no contact log), with zero-padded text ids."""
    root = tmp_path_factory.mktemp("padded")
    raw = make_raw(n_users=300, n_events=6000, seed=3)
    ids = {u: f"{i:05d}" for i, u in enumerate(raw["users"]["user_id"])}
    frames = {"users": raw["users"].assign(user_id=raw["users"]["user_id"].map(ids)),
              "events": raw["events"].assign(user_id=raw["events"]["user_id"].map(ids))}
    settings = Settings(home=root / "home")
    build_store(settings, frames, root / "csv")
    return settings


@pytest.fixture
def cli(padded, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(padded.home))
    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*args: str):
        result = runner.invoke(app, list(map(str, args)))
        assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
        return result.exit_code, " ".join(result.output.split())

    return invoke


def snapshots(settings: Settings) -> pd.DatetimeIndex:
    times = pd.read_parquet(settings.feature_dir / "behaviour.parquet", columns=["event_timestamp"])["event_timestamp"]
    return pd.DatetimeIndex(times.unique()).sort_values()


def labels_file(path: Path, ids: pd.Series, as_of: pd.Timestamp, seed: int = 0) -> Path:
    """Labels with no signal at all: a coin flip per user."""
    rng = np.random.default_rng(seed)
    pd.DataFrame({"user_id": ids, "as_of": as_of.strftime("%Y-%m-%d"), "label": rng.integers(0, 2, len(ids))}).to_csv(
        path, index=False)
    return path


def test_signal_free_labels_are_registered_but_never_promoted(padded, cli, tmp_path):
    from mlflow import MlflowClient

    from nextbest.training.registry import load_champions

    users = pd.read_parquet(padded.raw_dir / "users.parquet")["user_id"]
    path = labels_file(tmp_path / "labels.csv", users, snapshots(padded)[-6])
    code, text = cli("train", "churn", "--labels", path, "--trials", "1")
    assert code == 0, text
    assert "not promoted: churn v1" in text and "not clearly above chance (0.5)" in text
    assert "warning" not in text  # zero-padded ids were read as text: every label row named a user
    assert "churn" not in load_champions(padded)
    client = MlflowClient(padded.tracking_uri)
    run_id = client.get_model_version("nextbest-churn", "1").tags.get("run_id") or \
        client.search_model_versions("name='nextbest-churn'")[0].run_id
    assert client.get_run(run_id).data.tags["gate_decision"] == "refused"


def test_labels_naming_few_users_are_refused(padded, cli, tmp_path):
    users = pd.read_parquet(padded.raw_dir / "users.parquet")["user_id"]
    unpadded = users.astype(int).astype(str)  # what a spreadsheet does to 00042
    mostly_wrong = pd.concat([unpadded[unpadded != users], users[:5]])
    code, text = cli("train", "churn", "--labels", labels_file(tmp_path / "l.csv", mostly_wrong, snapshots(padded)[-6]))
    assert code == 2
    assert "name an ingested user" in text and "zero padding" in text and "ingested ids look like '00000'" in text


def test_labels_apply_only_where_they_are_read(cli, tmp_path):
    code, text = cli("train", "purchase", "--labels", tmp_path / "any.csv")
    assert code == 2 and "--labels is read by churn and label models only" in text


def test_a_training_date_needs_its_own_snapshot(padded, cli):
    between = snapshots(padded)[-7] + pd.Timedelta(days=3)
    code, text = cli("train", "purchase", "--as-of", between.strftime("%Y-%m-%d"), "--horizon", "14")
    assert code == 2
    assert f"no feature snapshot at {between.date()}" in text and "3 d earlier" in text
    assert f"nextbest features build --as-of {between.date()}" in text


def test_train_all_without_a_contact_log_trains_the_rest_and_says_what_it_skipped(cli):
    code, text = cli("train", "all", "--trials", "1")
    assert code == 0, text
    for name in ("conversion", "uplift", "send_time"):  # the contact models `train all` trains (jobs.DEFAULT_MODELS)
        assert f"skipped {name}: no contact log" in text
    assert "channel" not in text.replace("channel_response", "") and "offer_net" not in text  # trained only by name
    assert "│ purchase" in text  # trained; churn is trained or, when this data cannot, skipped with the reason
    assert "BG/NBD" in text.split("folds grouped by user")[1]  # purchase's customer-base baseline, same folds
    assert "│ churn" in text or "skipped churn: 896 training rows with labels [0]; need both classes" in text
    code, text = cli("train", "propensity")
    assert code == 2 and "cannot train propensity: no contact log" in text


# --- the pure checks ---------------------------------------------------------------------------------------

def test_auc_interval_separates_chance_from_signal():
    from nextbest.training.metrics import auc_interval

    rng = np.random.default_rng(0)
    # scores with no signal: the 95 % interval holds the true AUC, 0.5, about 95 times in 100
    covered = [low < 0.5 < high for low, high in (auc_interval(rng.random(1000) < 0.3, rng.random(1000)) for _ in range(300))]
    assert 0.91 <= np.mean(covered) <= 0.99
    y = rng.random(3000) < 0.3
    low, high = auc_interval(y, rng.random(3000) + 0.2 * y)  # a real, modest signal: clearly above chance
    assert low > 0.5
    assert np.isnan(auc_interval(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]))[0])  # one positive: unknown


def test_quality_refusal_names_the_interval_and_spares_good_and_uplift_models():
    from nextbest.training.jobs import quality_refusal

    assert "not clearly above chance" in quality_refusal("purchase", {"auc": 0.52, "auc_low": 0.49, "auc_high": 0.55})
    assert "too few" in quality_refusal("churn", {"auc": 0.9, "auc_low": float("nan"), "auc_high": float("nan")})
    assert quality_refusal("purchase", {"auc": 0.62, "auc_low": 0.55, "auc_high": 0.69}) is None
    assert quality_refusal("uplift", {"qini_auc": 0.0}) is None


def test_feature_problem_catches_missing_and_constant_features_at_the_training_date():
    from nextbest.training.datasets import TrainingSet
    from nextbest.training.jobs import feature_problem

    t = pd.Timestamp("2026-07-01", tz="UTC")
    rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(120)], "event_timestamp": [t - pd.Timedelta(days=7)] * 60 + [t] * 60,
                         "label": [0, 1] * 60, "a": np.arange(120.0), "b": np.arange(120.0) % 3})
    def problem(frame: pd.DataFrame) -> str | None:
        return feature_problem(TrainingSet(frame, "svc", ("a", "b"), ()))

    assert problem(rows) is None
    missing = rows.assign(a=np.where(rows["event_timestamp"] == t, np.nan, rows["a"]),
                          b=np.where(rows["event_timestamp"] == t, np.nan, rows["b"]))
    assert "missing for 100% of the rows at 2026-07-01" in problem(missing) and "--as-of 2026-07-01" in problem(missing)
    constant = rows.assign(a=1.0, b=np.where(rows["event_timestamp"] == t, 0.0, rows["b"]))
    assert "single value at 2026-07-01" in problem(constant)


def test_check_labels_drops_strangers_with_a_warning_and_refuses_a_foreign_file():
    from nextbest.training.jobs import check_labels

    users = pd.DataFrame({"user_id": [f"{i:05d}" for i in range(100)]})
    labels = pd.DataFrame({"user_id": [f"{i:05d}" for i in range(90)] + [f"x{i}" for i in range(10)], "label": 1})
    kept, warnings = check_labels(labels, users, "labels.csv")
    assert len(kept) == 90 and "10 of 100 label rows (10%) name no ingested user" in warnings[0]
    with pytest.raises(ValueError, match="only 0 of 100 label rows"):
        check_labels(labels.assign(user_id=[str(i) for i in range(100)]), users, "labels.csv")


def test_snapshot_dates_sit_on_the_feature_snapshots():
    from nextbest.training.datasets import snapshot_dates

    events = pd.DataFrame({"ts": pd.date_range("2026-01-01", "2026-06-30", freq="D", tz="UTC")})
    grid = pd.date_range("2026-01-04", "2026-07-01", freq="7D", tz="UTC")  # not aligned with last - horizon
    dates = snapshot_dates(events, 30, available=grid)
    assert set(dates) <= set(grid) and dates.max() == grid[grid + pd.Timedelta(days=30) <= "2026-07-01"].max()
    with pytest.raises(ValueError, match="no feature snapshot at 2026-05-02"):
        snapshot_dates(events, 30, as_of=pd.Timestamp("2026-05-02"), available=grid)


# --- any labelled outcome ------------------------------------------------------------------------------------------

def test_a_label_model_for_any_outcome_is_registered_under_its_own_name_with_its_own_feature_service(padded, cli, tmp_path):
    from mlflow import MlflowClient

    from nextbest.features.store import feature_store
    from nextbest.training.registry import load_version

    users = pd.read_parquet(padded.raw_dir / "users.parquet")
    as_of = snapshots(padded)[-6]
    # a planted outcome: older customers take the offer (age is a profile column, so a profile feature)
    path = tmp_path / "takeup.csv"
    pd.DataFrame({"user_id": users["user_id"], "as_of": as_of.strftime("%Y-%m-%d"),
                  "label": (users["age"] >= 45).astype(int)}).to_csv(path, index=False)
    code, text = cli("train", "label", "takeup", "--labels", path, "--trials", "1")
    assert code == 0, text
    assert "label-takeup" in text and "promoted" in text and "not promoted" not in text
    client = MlflowClient(padded.tracking_uri)
    version = client.get_model_version_by_alias("nextbest-label-takeup", "champion")
    assert client.get_run(version.run_id).data.tags["feature_service"] == "label_takeup_v1"
    service = feature_store(padded).get_feature_service("label_takeup_v1")
    assert {p.name for p in service.feature_view_projections} <= {"profile", "behaviour", "channel", "tags"}
    scorer = load_version(padded, "label-takeup", version.version)
    assert scorer.feature_service == "label_takeup_v1"
    code, text = cli("models")
    assert "label-takeup" in text and "champion" in text
    # scored offline like the other per-user models: the planted outcome ranks first
    code, text = cli("score", "--model", "label-takeup", "--as-of", as_of.strftime("%Y-%m-%d"), "--out", tmp_path / "s.csv")
    assert code == 0, text
    scores = pd.read_csv(tmp_path / "s.csv", dtype={"user_id": str}).merge(users[["user_id", "age"]], on="user_id")
    assert len(scores) == len(users) and (scores["model"] == "nextbest-label-takeup").all()
    assert scores.loc[scores["age"] >= 45, "score"].mean() > scores.loc[scores["age"] < 45, "score"].mean() + 0.3
    code, text = cli("train", "label", "Take-Up", "--labels", path)
    assert code == 2 and "lowercase letters" in text
    code, text = cli("train", "label", "takeup")
    assert code == 2 and "needs a name and a labels file" in text


def test_a_labels_file_of_one_class_is_refused_naming_the_labels_not_the_history(padded, cli, tmp_path):
    """A labels file whose rows are all 0: exit 2, the fix is in the file (not a longer history or --horizon, which
    no labels file has), and nothing is registered."""
    from mlflow import MlflowClient

    users = pd.read_parquet(padded.raw_dir / "users.parquet")
    path = tmp_path / "none.csv"
    pd.DataFrame({"user_id": users["user_id"], "as_of": snapshots(padded)[-6].strftime("%Y-%m-%d"), "label": 0}).to_csv(
        path, index=False)
    code, text = cli("train", "label", "none", "--labels", path, "--trials", "1")
    assert code == 2 and "labels [0]" in text and "the labels file must hold" in text and "--horizon" not in text
    assert not MlflowClient(padded.tracking_uri).search_model_versions("name='nextbest-label-none'")


def test_label_dates_between_snapshots_are_warned_about():
    from nextbest.training.jobs import label_date_warnings

    snaps = pd.date_range("2026-06-07", periods=4, freq="7D", tz="UTC")
    on = pd.DataFrame({"as_of": [snaps[1], snaps[2]]})
    assert label_date_warnings(on, snaps) == []
    off = pd.DataFrame({"as_of": [snaps[1], snaps[2] + pd.Timedelta(days=5)]})
    (warning,) = label_date_warnings(off, snaps)
    assert "1 of 2 label rows" in warning and "up to 5 d older" in warning
    assert f"features build --as-of {(snaps[2] + pd.Timedelta(days=5)).date()}" in warning


# --- honest validation ---------------------------------------------------------------------------------------------

def test_a_model_is_cross_validated_by_user_beside_its_baselines_refit_on_all_rows_and_gated_on_the_same_folds(
        padded, cli, tmp_path):
    from mlflow import MlflowClient

    users = pd.read_parquet(padded.raw_dir / "users.parquet")
    path = tmp_path / "older.csv"  # a planted outcome on a profile column, one row per user
    pd.DataFrame({"user_id": users["user_id"], "as_of": snapshots(padded)[-6].strftime("%Y-%m-%d"),
                  "label": (users["age"] >= 40).astype(int)}).to_csv(path, index=False)
    code, text = cli("train", "label", "older", "--labels", path, "--trials", "1")
    assert code == 0, text
    assert "folds grouped by user" in text and "logistic regression" in text
    client = MlflowClient(padded.tracking_uri)
    first = client.get_model_version_by_alias("nextbest-label-older", "champion")
    run = client.get_run(first.run_id).data
    for learner in ("lightgbm", "logistic"):  # both measured in the same run, with their intervals over folds
        assert run.metrics[f"{learner}_auc_folds_low"] <= run.metrics[f"{learner}_auc"] <= run.metrics[f"{learner}_auc_folds_high"]
    assert run.metrics["chosen_auc"] == max(run.metrics["lightgbm_auc"], run.metrics["logistic_auc"]) > 0.8
    assert run.metrics["auc"] > 0.8 and len(run.tags["nested_choices"].split(",")) == 3  # the nested choice's figure
    assert run.tags["split"] == "3-fold cross-validation grouped by user" and run.metrics["folds"] == 3
    assert int(run.tags["train_rows"]) == int(run.metrics["rows"]) == len(users)  # refit on every row the folds judged
    # the same recipe again: the champion's recipe on the challenger's folds scores the same, so it stays champion
    code, text = cli("train", "label", "older", "--labels", path, "--trials", "1")
    assert code == 0 and f"kept v{first.version}" in text, text
    second = client.search_model_versions("name='nextbest-label-older'", order_by=["version_number DESC"])[0]
    gate = client.get_run(second.run_id).data.metrics
    assert gate["gate_champion_auc"] == gate["gate_challenger_auc"] == run.metrics["chosen_auc"]


def test_a_time_aware_split_trains_each_fold_on_closed_horizons_or_says_why_it_cannot(cli, tmp_path):
    code, text = cli("train", "purchase", "--split", "time", "--dates", "6", "--horizon", "7", "--trials", "1")
    assert code == 0, text
    assert "folds of snapshot dates, 7-day embargo" in text and "│ purchase" in text
    code, text = cli("train", "purchase", "--split", "time", "--horizon", "21", "--trials", "1")  # 4 weekly dates
    assert code == 2 and "must span well beyond the label window" in text
    code, text = cli("train", "churn", "--split", "time", "--labels", tmp_path / "l.csv")
    assert code == 2 and "--split time is for models whose label lies in a horizon after the snapshot" in text


def test_features_built_but_never_applied_are_a_clear_error_not_a_lightgbm_crash():
    from nextbest.training.datasets import TrainingSet
    from nextbest.training.jobs import feature_problem

    frame = pd.DataFrame({"user_id": ["a", "b"], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"), "label": [0, 1]})
    problem = feature_problem(TrainingSet(frame, "label_x_v1", (), ()))
    assert problem is not None and "label_x_v1 gives no features" in problem and "nextbest features apply" in problem


def test_train_applies_the_feature_views_of_a_home_built_but_never_applied(padded, tmp_path, monkeypatch):
    """The own-data path is ingest, features build, train: a forgotten `features apply` is done, and said."""
    import shutil

    from nextbest.features.store import feature_store

    home = tmp_path / "home"
    shutil.copytree(padded.home, home, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "registry.db"))
    settings = Settings(home=home)
    assert not feature_store(settings).list_feature_views()
    monkeypatch.setenv("NEXTBEST_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["train", "propensity"])  # stops on the missing contact log, after the apply
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "ran `nextbest features apply` first" in text and "no contact log" in text
    assert {v.name for v in feature_store(settings).list_feature_views()} >= {"behaviour", "profile"}
