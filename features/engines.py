"""Where feature SQL runs: DuckDB on this machine (default), or Apache Spark for data past one machine.

Feature definitions (features/build.py) are written once, in DuckDB's SQL dialect. The DuckDB engine runs them
as they are, out of core (memory limit, threads and a spill folder from the build config); the Spark engine
transpiles them to Spark SQL with SQLGlot. Both read raw Parquet directly and stream results to Parquet: no
feature table is ever a whole pandas frame. `fetch` is for small results only (category lists, a k-means sample).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Engine", "DuckDBEngine", "SparkEngine", "spark_conf", "spark_session", "spark_sql", "merge_parts",
           "open_engine", "require_spark", "require_java", "EngineUnavailable", "ENGINES"]

ENGINES = ("duckdb", "spark")


class EngineUnavailable(RuntimeError):
    """The chosen engine cannot run here (its optional packages are missing); the message says how to fix it."""


class Engine(Protocol):
    """What feature building needs from a SQL engine."""

    dialect: str

    def table(self, name: str, path: Path) -> None: ...  # a view over one Parquet file
    def frame(self, name: str, df: pd.DataFrame) -> None: ...  # a small in-memory table (snapshot times, offsets)
    def view(self, name: str, sql: str) -> None: ...  # a named query (the raw tables normalised; recomputed per use)
    def keep(self, name: str, sql: str) -> None: ...  # a named query's rows, computed once and kept (a slice's rows)
    # DuckDB only (its builds in slices of users): def partition(self, sql, folder, column) -> None
    def write(self, sql: str, path: Path) -> int: ...  # the query's rows to one Parquet file; returns the row count
    def fetch(self, sql: str) -> pd.DataFrame: ...  # a small result
    def close(self) -> None: ...


class DuckDBEngine:
    """DuckDB in this process: memory bounded by `memory_limit`, spilling to `temp_directory` beyond it."""

    dialect = "duckdb"

    def __init__(self, memory_limit: str = "4GB", threads: int | None = None, temp_directory: Path | None = None):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")  # a library call must not print bars into a caller's logs
        self.con.execute(f"SET memory_limit = '{memory_limit}'")
        # Insertion order is not a feature: dropping it lets DuckDB stream COPY without buffering whole tables.
        self.con.execute("SET preserve_insertion_order = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if temp_directory is not None:
            Path(temp_directory).mkdir(parents=True, exist_ok=True)
            self.con.execute(f"SET temp_directory = '{_quoted(str(temp_directory))}'")

    def table(self, name: str, path: Path) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet('{_quoted(str(path))}')")

    def frame(self, name: str, df: pd.DataFrame) -> None:
        self.con.register(f"{name}_df", df)
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_df")
        self.con.unregister(f"{name}_df")

    def view(self, name: str, sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
        self.con.execute(f"DROP TABLE IF EXISTS kept_{name}")  # rows `keep` held under this name, if any

    def keep(self, name: str, sql: str) -> None:
        # A temp table (spilled past the memory limit like any other), read through a view of the same name.
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE kept_{name} AS {sql}")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM kept_{name}")

    def partition(self, sql: str, folder: Path, column: str) -> None:
        """The query's rows written once as `<folder>/<column>=<value>/*.parquet` (the column leaves the files)."""
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
        # scratch files read back once: snappy is cheaper to write than zstd
        self.con.execute(f"COPY ({sql}) TO '{_quoted(str(folder))}' "
                         f"(FORMAT parquet, COMPRESSION snappy, PARTITION_BY ({column}), OVERWRITE_OR_IGNORE)")

    def write(self, sql: str, path: Path) -> int:
        self.con.execute(f"COPY ({sql}) TO '{_quoted(str(path))}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)")
        return pq.ParquetFile(path).metadata.num_rows

    def fetch(self, sql: str) -> pd.DataFrame:
        return self.con.execute(sql).df()

    def close(self) -> None:
        self.con.close()


def spark_sql(sql: str) -> str:
    """A DuckDB-dialect query in Spark's dialect (SQLGlot): the one feature definition, run on Spark."""
    import sqlglot
    from sqlglot import exp

    def as_double(node: exp.Expression) -> exp.Expression:
        # Spark types `7.0` as DECIMAL and divides decimals to 6 places (0.7 came out 0.70000021); DuckDB's
        # arithmetic on such literals is in doubles, so the literals become doubles.
        if isinstance(node, exp.Literal) and not node.is_string and any(c in node.this for c in ".eE"):
            return exp.cast(node.copy(), "double")
        return node

    tree = sqlglot.parse_one(sql, read="duckdb").transform(as_double)
    return tree.sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)


def spark_conf(master: str = "local[*]", driver_memory: str = "2g", shuffle_partitions: int | None = None) -> dict[str, str]:
    """The Spark settings nextbest runs under: feature builds, batch scoring and Feast's Spark offline store
    (`feature_store.yaml`'s `spark_conf`) start their session from this one dictionary. Shuffle partitions: one per
    local core (local mode), else 8 (AQE coalesces them on a cluster)."""
    if shuffle_partitions is None:
        shuffle_partitions = _local_cores(master) or 8
    return {
        "spark.master": master,
        "spark.app.name": "nextbest",
        "spark.driver.memory": driver_memory,
        # The per-user aggregates carry ~50 conditional sums each: their generated methods pass HotSpot's 8,000-byte
        # limit and would run interpreted; compiling them cut the build's CPU (benchmarks/RESULTS.md, seventh session).
        # ParallelGC: throughput over pause times, for batch work. Both only take effect when this starts the JVM
        # (the driver; executors on a cluster get the same through spark.executor.extraJavaOptions).
        "spark.driver.extraJavaOptions": _JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": _JAVA_OPTIONS,
        "spark.sql.session.timeZone": "UTC",  # timestamps in and out of Spark are UTC, as on DuckDB
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.ansi.enabled": "false",  # DuckDB semantics: x / 0 is NULL, not an error
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # the CLI shows its own progress
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


_JAVA_OPTIONS = "-XX:-DontCompileHugeMethods -XX:+UseParallelGC"


def _local_cores(master: str) -> int | None:
    """Cores of a local master (`local`, `local[2]`, `local[*]`, `local[2,3]`); None for a cluster."""
    import os
    import re

    found = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if not found:
        return None
    cores = found.group(1)
    return max(1, os.cpu_count() or 1) if cores == "*" else int(cores or 1)


def spark_session(master: str = "local[*]", driver_memory: str = "2g", shuffle_partitions: int | None = None):
    """The SparkSession feature builds, batch scoring and Feast's Spark offline store run on (an existing one is
    reused as it is); EngineUnavailable, saying what to install, when Java is missing or does not start."""
    import os
    import sys

    from pyspark.sql import SparkSession

    require_java()
    # Python workers must import nextbest: the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(master, driver_memory, shuffle_partitions).items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as err:  # PySparkRuntimeError JAVA_GATEWAY_EXITED, a master that does not answer, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
        raise EngineUnavailable(f"Spark did not start ({type(err).__name__}: {first}): check the Spark master "
                                f"NEXTBEST_SPARK_MASTER={master} and that Java 17 runs (JAVA_HOME)") from None


class SparkEngine:
    """Spark SQL (local mode or a cluster) over the same Parquet files; the queries are transpiled from DuckDB's."""

    dialect = "spark"

    def __init__(self, spark=None, master: str = "local[*]", work_dir: Path | None = None):
        self.spark = spark or spark_session(master)
        # Feast's Spark offline store turns this on for the session it shares: `x` is then a regex over column names
        # in a SELECT list; the feature queries mean plain names.
        self.spark.conf.set("spark.sql.parser.quotedRegexColumnNames", "false")
        self.work = Path(work_dir or tempfile.mkdtemp(prefix="nextbest-spark-"))
        self.work.mkdir(parents=True, exist_ok=True)

    def table(self, name: str, path: Path) -> None:
        self.spark.read.parquet(str(_spark_readable(Path(path), self.work))).createOrReplaceTempView(name)

    def frame(self, name: str, df: pd.DataFrame) -> None:
        folder = self.work / f"frame-{name}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        df.to_parquet(folder / "part-0.parquet", index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
        self.spark.read.parquet(str(folder)).createOrReplaceTempView(name)

    def view(self, name: str, sql: str) -> None:
        self.spark.sql(spark_sql(sql)).createOrReplaceTempView(name)

    def keep(self, name: str, sql: str) -> None:
        self.spark.sql(spark_sql(sql)).cache().createOrReplaceTempView(name)

    def write(self, sql: str, path: Path) -> int:
        folder = self.work / f"out-{uuid.uuid4().hex[:8]}"
        self.spark.sql(spark_sql(sql)).write.parquet(str(folder))
        return merge_parts(folder, Path(path))

    def fetch(self, sql: str) -> pd.DataFrame:
        return self.spark.sql(spark_sql(sql)).toPandas()

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)  # the session stays: it may be shared (tests, scoring)


def merge_parts(folder: Path, path: Path, schema: pa.Schema | None = None) -> int:
    """Spark's part files of one result as one Parquet file, streamed row group by row group (bounded memory)."""
    parts = sorted(p for p in Path(folder).glob("part-*.parquet"))
    schema = schema or (pq.read_schema(parts[0]) if parts else None)
    rows = 0
    if schema is None:
        raise ValueError(f"no Parquet parts in {folder}")
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for part in parts:
            f = pq.ParquetFile(part)
            for i in range(f.num_row_groups):
                batch = f.read_row_group(i).select(schema.names).cast(schema)
                writer.write_table(batch)
                rows += batch.num_rows
    return rows


def _spark_readable(path: Path, work: Path) -> Path:
    """`path`, or a copy with nanosecond timestamps as microseconds (pandas writes ns; Spark reads only us)."""
    schema = pq.read_schema(path)
    target = pa.schema([f.with_type(pa.timestamp("us", tz=f.type.tz)) if pa.types.is_timestamp(f.type) and f.type.unit == "ns"
                        else f for f in schema])
    if target.equals(schema):
        return path
    copy = work / f"in-{path.stem}-{uuid.uuid4().hex[:8]}.parquet"
    source = pq.ParquetFile(path)
    with pq.ParquetWriter(copy, target) as writer:
        for batch in source.iter_batches(batch_size=262_144):
            writer.write_table(pa.Table.from_batches([batch]).cast(target, safe=False))
    return copy


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def require_spark() -> None:
    """EngineUnavailable, saying how to install it, unless PySpark and SQLGlot import and Java is found."""
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError:
        raise EngineUnavailable("NEXTBEST_ENGINE=spark needs PySpark and SQLGlot: pip install 'nextbest[spark]' "
                                "(and Java 17), or unset NEXTBEST_ENGINE to run on DuckDB") from None
    require_java()


def require_java() -> None:
    """EngineUnavailable unless a `java` is found the way PySpark looks for it (JAVA_HOME, else the PATH)."""
    import os

    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    if java is None or not Path(java).exists():
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on the PATH and JAVA_HOME is unset"
        raise EngineUnavailable(f"Spark needs a Java runtime (17) and {where}: install Java 17 (apt-get install "
                                "openjdk-17-jre-headless) or point JAVA_HOME at it, or unset NEXTBEST_ENGINE to run "
                                "on DuckDB")


def open_engine(engine: str, home: Path, memory_limit: str = "4GB", threads: int | None = None,
                spark_master: str = "local[*]") -> Engine:
    """The engine a build runs on, by name (`NEXTBEST_ENGINE`); Spark asks for the optional extra when missing."""
    if engine == "spark":
        require_spark()
        return SparkEngine(master=spark_master, work_dir=Path(home) / ".build-tmp" / f"spark-{uuid.uuid4().hex[:8]}")
    if engine != "duckdb":
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return DuckDBEngine(memory_limit, threads, Path(home) / ".build-tmp")
