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


def test_spark_settings_fit_local_mode_and_compile_the_feature_aggregates():
    """One shuffle partition per local core (8 on a cluster, where AQE coalesces them), and the JVM told to compile
    the per-user aggregates' huge generated methods instead of interpreting them (the build's CPU, RESULTS.md)."""
    from nextbest.features.engines import spark_conf

    assert spark_conf("local[2]")["spark.sql.shuffle.partitions"] == "2"
    assert spark_conf("local[3, 4]")["spark.sql.shuffle.partitions"] == "3"
    assert spark_conf("local")["spark.sql.shuffle.partitions"] == "1"
    assert spark_conf("spark://host:7077")["spark.sql.shuffle.partitions"] == "8"
    assert spark_conf("local[2]", shuffle_partitions=5)["spark.sql.shuffle.partitions"] == "5"
    for side in ("driver", "executor"):
        assert "-XX:-DontCompileHugeMethods" in spark_conf("yarn")[f"spark.{side}.extraJavaOptions"].split()


def test_spark_builds_the_same_feature_tables_as_duckdb(spark):
    from nextbest.features.engines import SparkEngine

    raw = make_raw(n_users=60, n_events=1500, n_contacts=400, seed=3)
    raw["events"] = raw["events"].astype({"user_id": "category"})  # dictionary-encoded ids read the same on both
    # Clicks, so the time profile's exclusion of the day after a click (a correlated NOT EXISTS) is compared too.
    raw["contacts"]["clicked_at"] = raw["contacts"]["opened_at"].where(np.arange(len(raw["contacts"])) % 2 == 0) \
        + pd.Timedelta(minutes=5)
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
    sends, opens = duck["time_profile"].filter(like="sends_h"), duck["time_profile"].filter(like="opens_h")
    assert sends.shape[1] == opens.shape[1] == 8 and (sends > 0).sum().gt(0).sum() > 1 and opens.to_numpy().sum() > 0
    from nextbest.features.build import BuildConfig

    all_events = build_all(raw, BuildConfig(caused_hours=0))["time_profile"]["rhythm_events_365d"]
    assert 0 < duck["time_profile"]["rhythm_events_365d"].sum() < all_events.sum()  # some events were left out


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


@pytest.fixture(scope="module")
def offline_homes(tmp_path_factory) -> tuple[Settings, Settings]:
    """One small world's feature tables (built as `nextbest features build` does), applied in two homes: for the
    default DuckDB offline store and, through NEXTBEST_ENGINE=spark, for Feast's Spark offline store."""
    import shutil

    from nextbest.features.build import BuildConfig, build_features
    from nextbest.features.ingest import ingest, plan_from_dir
    from nextbest.features.store import apply
    from tests.conftest import write_csvs

    root = tmp_path_factory.mktemp("offline")
    duck = Settings(home=root / "duckdb")
    ingest(plan_from_dir(write_csvs(make_raw(n_users=60, n_events=1500, n_contacts=400, seed=3), root / "csv")), duck.raw_dir)
    build_features(duck, BuildConfig())
    apply(duck)
    shutil.copytree(duck.home, root / "spark")
    on_spark = Settings(home=root / "spark", engine="spark", spark_master="local[2]")
    apply(on_spark)  # the same tables, registered as SparkSources
    return duck, on_spark


def _same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns, rows and values (floats within 1e-9, missing where missing); timestamps as instants."""
    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    for col in want.columns:
        a, b = got[col], want[col]
        if pd.api.types.is_datetime64_any_dtype(b):
            assert (pd.to_datetime(a, utc=True) == pd.to_datetime(b, utc=True)).all(), col
        elif pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(a.to_numpy("float64"), b.to_numpy("float64"), rtol=1e-9, atol=1e-9, err_msg=col)
        else:
            assert a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist(), col


def test_feast_reads_the_same_point_in_time_training_set_through_its_spark_offline_store(spark, offline_homes):
    from nextbest.features.feature_services import service_name
    from nextbest.features.store import training_store
    from nextbest.training.datasets import historical, snapshot_rows

    duck, on_spark = offline_homes
    config = yaml.safe_load((on_spark.feast_dir / "feature_store.yaml").read_text())["offline_store"]
    assert config["type"] == "spark" and config["spark_conf"]["spark.sql.session.timeZone"] == "UTC"
    store = training_store(on_spark)
    assert {type(v.batch_source).__name__ for v in store.list_feature_views()} == {"SparkSource"}

    behaviour = read_table(duck, "behaviour")
    snaps = pd.DatetimeIndex(sorted(behaviour["event_timestamp"].unique()))
    users = read_table(duck, "profile").drop_duplicates("user_id").head(6)
    rows = snapshot_rows(users.assign(signup_at=snaps[0] - pd.Timedelta(days=1)), snaps[-2:])  # as training makes them
    u = users["user_id"].iloc[0]
    between = snaps[-2] + pd.Timedelta(days=3, hours=12)  # after one snapshot, before the next
    extra = pd.DataFrame({"user_id": [u, u, u], "event_timestamp": [between, snaps[0] - pd.Timedelta(days=2),
                                                                    snaps[-1] + pd.Timedelta(days=45)]})
    rows = pd.concat([rows, extra], ignore_index=True).assign(label=lambda f: np.arange(len(f)) % 2)

    # Part of the purchase model's FeatureService, as a shared join asks for it ("view:feature"): a view with a TTL
    # and one without, numbers, text and flags (each more view costs Spark seconds of planning on the tests' world).
    service = store.get_feature_service(service_name("purchase"))
    refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features
            if p.name == "profile" or f.name in ("tenure_days", "events_30d", "revenue_90d", "purchases_all", "aff_books")]
    want = historical(training_store(duck), rows, refs)
    got = historical(store, rows, refs)
    _same_frame(got, want)
    assert got["tenure_days"].notna().sum() >= 12 and got["timezone"].notna().all()  # not a match of empty columns

    # Point in time: the row between two snapshots reads the earlier one; before the first there is nothing; past
    # the behaviour view's 30-day TTL its features are gone while the profile (no TTL) stays.
    mine = behaviour[behaviour["user_id"] == u].set_index("event_timestamp")["tenure_days"]
    at = got.set_index("event_timestamp").loc[lambda f: f["user_id"] == u, ["tenure_days", "age"]]
    assert at.loc[between, "tenure_days"] == mine[snaps[-2]] != mine[snaps[-1]]
    assert np.isnan(at.loc[snaps[0] - pd.Timedelta(days=2), "tenure_days"])
    assert np.isnan(at.loc[snaps[-1] + pd.Timedelta(days=45), "tenure_days"])
    assert at.loc[snaps[-1] + pd.Timedelta(days=45), "age"] == users["age"].iloc[0]


def test_the_spark_offline_store_without_pyspark_or_java_is_a_clear_exit_2(spark, offline_homes, tmp_path, monkeypatch):
    """`features apply` for the Spark offline store, without PySpark or without Java: exit 2 saying what to install,
    no traceback, the registry untouched; training on views applied for another offline store: the fix named."""
    from typer.testing import CliRunner

    from nextbest.features.store import feature_store, training_store
    from nextbest.pipelines.cli import app

    duck, _ = offline_homes
    home = copy_home(duck, tmp_path / "home")
    registry = (home.feast_dir / "registry.db").read_bytes()
    env = {"NEXTBEST_HOME": str(home.home), "NEXTBEST_ENGINE": "spark"}
    no_java = CliRunner().invoke(app, ["features", "apply"], env={**env, "JAVA_HOME": str(tmp_path / "no-java")})
    assert no_java.exit_code == 2 and "Java" in no_java.output and "Traceback" not in no_java.output, no_java.output
    monkeypatch.setitem(__import__("sys").modules, "pyspark", None)  # as if the extra were not installed
    no_pyspark = CliRunner().invoke(app, ["features", "apply"], env=env)
    assert no_pyspark.exit_code == 2 and "pip install 'nextbest[spark]'" in no_pyspark.output, no_pyspark.output
    assert (home.feast_dir / "registry.db").read_bytes() == registry
    # A process that only reads online (the decision service's image has no PySpark) still opens the store.
    assert {v.name for v in feature_store(Settings(home=home.home, engine="spark")).list_feature_views()} >= {"profile"}
    monkeypatch.undo()
    with pytest.raises(ValueError, match="features apply"):  # views registered as FileSources, Spark asked for
        training_store(Settings(home=home.home, offline_store="spark", spark_master="local[2]"))
