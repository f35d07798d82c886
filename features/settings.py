"""The one typed settings object for nextbest (environment prefix ``NEXTBEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "CHANNELS"]

# The channels the simulated world and the default operator config know. A real company may add more
# in its channels table; consent columns are then `consent_<channel>`.
CHANNELS: tuple[str, ...] = ("push", "sms", "email", "inapp", "wechat")


class Settings(BaseSettings):
    """Where nextbest keeps its data and which stores it uses; every field can be set as NEXTBEST_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", frozen=True, extra="ignore")

    # Each field's description is the documentation: docs/configuration.md is generated from it.
    home: Path = Field(Path(".nextbest"), description="All state: raw tables, feature tables, the Feast registry, "
                       "the SQLite stores, the decision logs.")
    project: str = Field("nextbest", description="Feast project name.")
    online_store: Literal["sqlite", "redis"] = Field("sqlite", description="Feast online store: a SQLite file in "
                                                     "home, or Redis at `redis_url` (shared by service replicas).")
    redis_url: str = Field("127.0.0.1:6379", description="Redis as `host:port[,db=N]` (Feast's connection string), "
                           "for the online store and the contact ledger when they are `redis`.")
    offline_store: Literal["duckdb", "file", "spark"] | None = Field(None, description="Feast offline store for "
                                                                     "point-in-time training sets: `duckdb` (embedded), "
                                                                     "`file` (Dask), or `spark` (Feast's Spark offline "
                                                                     "store over the same Parquet tables, on "
                                                                     "`spark_master`); unset: `spark` when `engine` is "
                                                                     "`spark`, else `duckdb`. Run `nextbest features "
                                                                     "apply` after changing it.")
    engine: Literal["duckdb", "spark"] = Field("duckdb", description="Engine that builds the feature tables and runs "
                                              "`nextbest score`: DuckDB on this machine (out of core), or Apache Spark "
                                              "(`pip install nextbest[spark]`, Java 17) past one machine; with `spark`, "
                                              "training sets are joined by Feast's Spark offline store too (see "
                                              "`offline_store`).")
    spark_master: str = Field("local[*]", description="Spark master URL of the Spark engine and of Feast's Spark "
                              "offline store: `local[*]` uses every core here; `spark://host:7077`, `yarn` or "
                              "`k8s://...` a cluster.")
    build_memory: str = Field("4GB", pattern=r"^(?i)\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", description="Memory limit of a DuckDB feature build; beyond it DuckDB spills "
                              "to `<home>/.build-tmp` instead of growing (e.g. `2GB`, `500MB`).")
    build_threads: int | None = Field(None, ge=1, description="Threads of a DuckDB feature build; unset: one per core.")
    seed: int = Field(7, description="Seed of simulation, splits, tuning and the service's exploration.")
    ledger_backend: Literal["sqlite", "redis"] = Field("sqlite", description="Contact ledger (caps, idempotency "
                                                       "keys, suppressions): SQLite WAL in home, or Redis.")
    mlflow_uri: str | None = Field(None, description="MLflow tracking and registry URI; unset: a SQLite file in "
                                   "home.")
    operator_config: Path | None = Field(None, description="Operator YAML (offers, channels, caps, triggers); unset: "
                                         "`<home>/operator.yaml` when it exists, else the built-in config.")
    host: str = Field("127.0.0.1", description="Address the decision service binds (an IP address); never 0.0.0.0 "
                      "by default.")
    port: int = Field(3000, ge=1, le=65535, description="Port of the decision service.")
    shutdown_grace_s: float = Field(25.0, ge=0, le=3600, description="On SIGTERM the service answers new requests "
                                    "503 and gives those in flight this many seconds to finish before it stops "
                                    "anyway (below Kubernetes' default 30-s termination period).")
    workers: int = Field(1, description="Decision-service worker processes (each loads the models; the "
                         "ledger keeps caps exact across them).")
    ingest_past_years: int = Field(50, ge=1, description="Ingest refuses timestamps more than this many years "
                                   "before today (a typo or a placeholder such as 1900-01-01).")
    ingest_future_days: int = Field(2, ge=0, description="Ingest refuses timestamps more than this many days after "
                                    "today.")
    data_dir: Path | None = Field(None, description="A folder of exports any mapping may read besides its own folder "
                                  "(`nextbest ingest --allow-dir` for one run).")
    # The decision service's guard (serving/guard.py) and clock (serving/clock.py).
    api_key: SecretStr | None = Field(None, description="API key of the decision service: callers send "
                                      "`Authorization: Bearer <key>` or `X-API-Key: <key>`. Required on every endpoint "
                                      "but the probes when the service listens beyond loopback (it refuses to start "
                                      "there without one); at least 16 characters.")
    api_key_on_loopback: Literal["none", "writes", "all"] = Field("none", description="Also ask for the API key on "
                                                                  "loopback: on the state-changing endpoints (`writes`) "
                                                                  "or on all (`all`, e.g. behind a local proxy).")
    allowed_hosts: str = Field("localhost,127.0.0.1,::1", description="Host header allow-list of the decision service, "
                               "comma-separated (`*`: any); against DNS rebinding.")
    max_body_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies get 413 before they are read.")
    clock_skew_s: int = Field(300, ge=0, description="How far after the server clock a caller's `now`, event `ts` or "
                              "feedback `at` may be.")
    max_age_s: int = Field(86_400, ge=0, description="How far before the server clock a caller's `now`, event `ts` "
                           "and campaign times may be.")
    max_outcome_age_s: int = Field(30 * 86_400, ge=0, description="How far before the server clock a feedback `at` "
                                   "may be (outcomes are reported late).")
    cv_folds: int = Field(3, ge=0, le=20, description="Folds of the user-grouped cross-validation of the purchase, "
                          "churn and label models (metrics with intervals over folds, baselines and the champion's "
                          "recipe on the same folds; the registered model is refit on all rows); 0 or 1: one "
                          "holdout instead.")
    uplift_gate_draws: int = Field(200, ge=0, description="Paired bootstrap draws (over the holdout's users) behind "
                                   "the uplift model's holdout gate: a challenger is promoted only when the interval of "
                                   "its Qini AUC minus the champion's, both on the same holdout and the same draws, lies "
                                   "above 0 (surely better, not better by the holdout's noise); 0: promoted on any higher "
                                   "Qini AUC.")
    cv_max_rows: int = Field(12_000, ge=100, description="Above this many training rows, the cross-validation runs on "
                             "a seeded sample of whole users of about this many rows (the refit still uses all rows).")
    train_sample_rows: int = Field(500_000, ge=1000, description="Rows of each training row set (the contact log, the "
                                   "user snapshots) joined with the features; a larger one is sampled first, the same "
                                   "share of every label stratum, recorded in the MLflow run (`nextbest train "
                                   "--sample-rows` overrides it for one run).")

    campaign_four_eyes: bool = Field(True, description="A campaign must be approved by someone other than who "
                                     "submitted it (`false`: one person may do both, e.g. a team of one).")
    monitor_blocks_promotion: bool = Field(True, description="While `nextbest monitor` has open alerts, no model is "
                                           "promoted: not by `nextbest promote` (unless --ignore-alerts), not by "
                                           "training's holdout gate, not by retrain's policy gate.")
    monitor_psi_alert: float = Field(0.2, gt=0, description="`nextbest monitor` raises an alert (a metric and a log "
                                     "line; it blocks promotions) when a feature's or score's PSI exceeds this.")
    monitor_ece_alert: float = Field(0.05, gt=0, le=1, description="Alert when a model's expected calibration error "
                                     "against realised outcomes exceeds this.")
    monitor_auc_alert: float = Field(0.55, ge=0, le=1, description="Alert when a model's AUC against realised "
                                     "outcomes in the latest week (with at least 10 converted and 10 unconverted "
                                     "actions) falls below this: it no longer ranks who converts.")
    monitor_reference_days: int = Field(28, ge=1, description="Feature drift compares the latest feature snapshot "
                                        "with the one this many days earlier (or the earliest there is).")
    dashboard_port: int = Field(8050, ge=1, le=65535, description="Port of `nextbest dashboard` (it binds `host`).")

    @property
    def offline_engine(self) -> Literal["duckdb", "file", "spark"]:
        """The Feast offline store in force: `offline_store` when set, else the one that goes with `engine`."""
        if self.offline_store is not None:
            return self.offline_store
        return "spark" if self.engine == "spark" else "duckdb"

    @property
    def raw_dir(self) -> Path:
        return self.home / "raw"

    @property
    def operator_yaml(self) -> Path | None:
        """The operator config in force: NEXTBEST_OPERATOR_CONFIG, else `<home>/operator.yaml` when it exists
        (`nextbest simulate` writes the simulated world's catalog there), else None: the built-in config."""
        if self.operator_config is not None:
            return self.operator_config
        local = self.home / "operator.yaml"
        return local if local.exists() else None

    @property
    def feature_dir(self) -> Path:
        return self.home / "feature_tables"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking and registry store: a SQLite file in home unless NEXTBEST_MLFLOW_URI says otherwise."""
        return self.mlflow_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.db"

    @property
    def ledger_identity_path(self) -> Path:
        """The home's copy of its contact ledger's identity: a ledger store without it is refused (fail closed)."""
        return self.home / "ledger.identity"

    @property
    def log_dir(self) -> Path:
        """Append-only decision and outcome logs (JSON lines), read by training and monitoring."""
        return self.home / "logs"

    @property
    def truth_dir(self) -> Path:
        """Ground truth of a simulated world: evaluation only, never read by feature code."""
        return self.home / "truth"
