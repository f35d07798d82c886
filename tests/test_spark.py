"""The Spark engine holds to DuckDB's answers: the same feature tables from the same raw data, the same batch
decisions for the same users. One local SparkSession for the module (starting one costs seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from nextbest.features.build import build_all
from nextbest.features.settings import Settings
from nextbest.features.store import read_table
from tests.conftest import copy_home, make_raw

NOW = datetime(2026, 9, 30, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def spark():
    try:
        from nextbest.features.engines import spark_session
    except ImportError as err:  # pragma: no cover - `make test` installs the extra
        pytest.fail(f"the Spark extra is missing ({err}): run `make spark` (pip install -e '.[spark]')")
    session = spark_session("local[2]", shuffle_partitions=2)
    session.sparkContext.setLogLevel("ERROR")
    # Tiny data: compiling generated code for each query costs more than interpreting it.
    session.conf.set("spark.sql.codegen.wholeStage", "false")
    session.conf.set("spark.sql.codegen.factoryMode", "NO_CODEGEN")
    yield session
    session.stop()


def test_spark_builds_the_same_feature_tables_as_duckdb(spark):
    from nextbest.features.engines import SparkEngine

    raw = make_raw(n_users=60, n_events=1500, n_contacts=400, seed=3)
    raw["events"] = raw["events"].astype({"user_id": "category"})  # dictionary-encoded ids read the same on both
    duck = build_all(raw)
    on_spark = build_all(raw, engine=SparkEngine(spark))
    assert list(duck) == list(on_spark)
    for name, want in duck.items():
        got = on_spark[name]
        assert list(got.columns) == list(want.columns), name
        assert got.dtypes.astype(str).tolist() == want.dtypes.astype(str).tolist(), name
        assert len(got) == len(want) > 0, name
        for col in want.columns:
            if pd.api.types.is_float_dtype(want[col]):
                np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=f"{name}.{col}")
            else:
                assert got[col].tolist() == want[col].tolist(), f"{name}.{col}"
    # Not a vacuous match: the tables carry the signal the tiny world put in them.
    assert duck["behaviour"]["purchases_all"].sum() > 0 and duck["channel"]["contacts_90d"].sum() > 0
    assert duck["tags"]["behaviour_cluster"].nunique() > 1 and (duck["time_profile"]["peak_open_hour"] >= 0).any()


def test_batch_scoring_on_spark_agrees_with_the_single_machine_path(spark, trained, tmp_path):
    from nextbest.pipelines.score import ScoreConfig, score, score_on_spark
    from nextbest.serving.runtime import Runtime

    home = copy_home(trained, tmp_path / "home")
    operator = yaml.safe_load((home.home / "operator.yaml").read_text())
    operator["exploration"] = {"method": "none"}  # the greedy choice only: random picks depend on the order of users
    (home.home / "operator.yaml").write_text(yaml.safe_dump(operator))
    # Spark's Python workers run on the real clock: let them believe the decision time of the test world.
    home = Settings(home=home.home, max_age_s=10**9)
    ids = tuple(read_table(home, "profile")["user_id"].astype(str).tolist()[:80])
    config = dict(user_ids=ids, now=NOW, chunk=20)
    driver = Runtime(home)  # the driver's; each Spark partition loads its own
    single = score(home, ScoreConfig(out=tmp_path / "single.parquet", **config), runtime=driver)
    on_spark = score_on_spark(home, ScoreConfig(out=tmp_path / "spark.parquet", **config), spark=spark, runtime=driver)
    assert on_spark["partitions"] == 2 and on_spark["scored"] == single["scored"] == len(ids)
    assert on_spark["with an action"] == single["with an action"] > 0

    key = ["user_id", "rank"]
    cols = ["offer_id", "channel", "send_at", "expected_value", "p_convert", "propensity", "degraded_reasons"]
    want = pd.read_parquet(tmp_path / "single.parquet").sort_values(key).reset_index(drop=True)
    got = pd.read_parquet(tmp_path / "spark.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key + cols], want[key + cols])


def test_spark_engine_without_its_extra_is_a_clear_exit_2(tmp_path, monkeypatch):
    """NEXTBEST_ENGINE=spark where PySpark is not installed: exit 2 naming the extra, no traceback, no tables."""
    from typer.testing import CliRunner

    from nextbest.features.ingest import ingest, plan_from_dir
    from nextbest.pipelines.cli import app
    from tests.conftest import write_csvs

    home = tmp_path / "home"
    ingest(plan_from_dir(write_csvs(make_raw(n_users=20, n_events=200, n_contacts=50), tmp_path / "csv")), home / "raw")
    monkeypatch.setitem(__import__("sys").modules, "pyspark", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["features", "build"], env={"NEXTBEST_HOME": str(home), "NEXTBEST_ENGINE": "spark"})
    assert result.exit_code == 2, result.output
    assert "pip install 'nextbest[spark]'" in result.output and "Traceback" not in result.output
    assert not (home / "feature_tables").exists()
