"""The one typed settings object for nextbest (environment prefix ``NEXTBEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "CHANNELS"]

# The channels the simulated world and the default operator config know. A real company may add more
# in its channels table; consent columns are then `consent_<channel>`.
CHANNELS: tuple[str, ...] = ("push", "sms", "email", "inapp", "wechat")


class Settings(BaseSettings):
    """Where nextbest keeps its data and which stores it uses; every field can be set as NEXTBEST_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="NEXTBEST_", frozen=True, extra="ignore")

    home: Path = Path(".nextbest")  # all state: raw tables, feature tables, Feast registry, stores
    project: str = "nextbest"  # Feast project name
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "127.0.0.1:6379"  # host:port[,db=N], Feast's redis connection string
    offline_store: Literal["duckdb", "file"] = "duckdb"
    seed: int = 7
    ledger_backend: Literal["sqlite", "redis"] = "sqlite"  # contact ledger: caps, idempotency keys
    mlflow_uri: str | None = None  # default: a SQLite file in home (see tracking_uri)
    operator_config: Path | None = None  # operator YAML (offers, channels, caps, triggers); default: see operator_yaml
    host: str = "127.0.0.1"  # the decision service binds here; never 0.0.0.0 by default
    port: int = 3000
    workers: int = 1  # decision service worker processes (each loads the models; the ledger keeps caps exact across them)
    # Ingest: the dates a raw timestamp may take (a sane window around today; outside it, a typo or a placeholder
    # such as 1900-01-01), and a folder of exports a mapping may read besides its own folder.
    ingest_past_years: int = 50
    ingest_future_days: int = 2
    data_dir: Path | None = None

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
    def log_dir(self) -> Path:
        """Append-only decision and outcome logs (JSON lines), read by training and monitoring."""
        return self.home / "logs"

    @property
    def truth_dir(self) -> Path:
        """Ground truth of a simulated world: evaluation only, never read by feature code."""
        return self.home / "truth"
