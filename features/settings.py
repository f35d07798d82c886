"""The one typed settings object for nextbest (environment prefix ``NEXTBEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
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
    # The decision service's guard (serving/guard.py). Beyond loopback every endpoint but /livez and
    # /readyz needs the API key, and the service refuses to start without one.
    api_key: SecretStr | None = None  # callers send `Authorization: Bearer <key>` or `X-API-Key: <key>`
    api_key_on_loopback: Literal["none", "writes", "all"] = "none"  # also ask for it on loopback: writes or all
    allowed_hosts: str = "localhost,127.0.0.1,::1"  # Host header allow-list, comma-separated ("*": any)
    max_body_bytes: int = 1_048_576  # larger request bodies get 413 before they are read
    # Caller timestamps (`now`, event `ts`, feedback `at`) are believed only near the server clock.
    clock_skew_s: int = 300  # how far ahead of the server clock
    max_age_s: int = 86_400  # how far behind, for `now`, `ts` and campaign times
    max_outcome_age_s: int = 30 * 86_400  # how far behind, for feedback `at` (outcomes arrive late)

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
