"""The MLflow registry: log runs, register checksummed safe-format models, gate champion/challenger, load back.

Models are stored as plain files (LightGBM text, torch state_dict, JSON) plus `checksums.json`; the MLflow
model is a pyfunc whose loader (`_load_pyfunc` below) reads only those files after verifying them.
Nothing here loads a pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings

__all__ = [
    "MODEL_NAMES",
    "PRIMARY_METRIC",
    "LABEL_PREFIX",
    "registered_name",
    "primary_metric",
    "RegistryUnavailable",
    "ChecksumError",
    "ModelFormatError",
    "check_format",
    "Champion",
    "Scorer",
    "save_scorer",
    "load_scorer",
    "log_model",
    "synthetic_example",
    "gate",
    "policy_gate",
    "promote",
    "rollback",
    "list_versions",
    "load_version",
    "load_champions",
    "code_version",
    "model_contract",
    "schema_digest",
]

MODEL_NAMES: dict[str, str] = {
    "conversion": "nextbest-conversion",
    "uplift": "nextbest-uplift",
    "purchase": "nextbest-purchase",
    "churn": "nextbest-churn",
    "channel": "nextbest-channel",
    "send_time": "nextbest-send-time",
    "offer_net": "nextbest-offer-net",
}
# The metric the promotion gate compares (higher is better) on the challenger's holdout.
PRIMARY_METRIC: dict[str, str] = {name: "auc" for name in MODEL_NAMES} | {"uplift": "qini_auc"}
CHAMPION, CHALLENGER = "champion", "challenger"
# A propensity model for any labelled outcome (`nextbest train label NAME`) is the model "label-NAME",
# registered as "nextbest-label-NAME"; its primary metric is the AUC.
LABEL_PREFIX = "label-"


def registered_name(name: str) -> str:
    """The registry name of a model: a built-in model's, or nextbest-label-NAME for a label model."""
    if name in MODEL_NAMES:
        return MODEL_NAMES[name]
    if name.startswith(LABEL_PREFIX) and len(name) > len(LABEL_PREFIX):
        return f"nextbest-{name}"
    raise KeyError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} or label-NAME")


def primary_metric(name: str) -> str:
    return PRIMARY_METRIC.get(name, "auc")
_CHECKSUMS = "checksums.json"
_SHRINKAGE = "shrinkage.json"
_CONTRACT = "contract.json"  # what serving needs to use the model: FeatureService, its input types, request columns


class RegistryUnavailable(Exception):
    """The tracking/registry store cannot be reached."""


class ChecksumError(Exception):
    """A model artifact does not match the checksum recorded when it was registered."""


class ModelFormatError(ChecksumError):
    """A model saved in a newer file format than this code reads (`scorers.MODEL_FORMAT`): refused, never read in
    part. A `ChecksumError`, so every caller that refuses an unverifiable model refuses this one the same way."""


class Scorer(Protocol):
    feature_service: str

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class Champion:
    name: str  # short name
    version: str  # registry version
    model: Scorer


# --- files and checksums ---------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_scorer(scorer, folder: Path, contract: dict | None = None) -> str:
    """Write the scorer's files (and its contract) and their sha256 list; returns the digest of that list."""
    from nextbest.training.scorers import MODEL_FORMAT

    folder.mkdir(parents=True, exist_ok=True)
    scorer.save(folder)
    meta = json.loads((folder / "meta.json").read_text())  # the format the files are in: `load_scorer` checks it
    (folder / "meta.json").write_text(json.dumps({**meta, "format": MODEL_FORMAT}, default=str))
    if getattr(scorer, "shrinkage_", None) is not None:  # an uplift model's policy shrinkage (training/shrinkage.py)
        (folder / _SHRINKAGE).write_text(json.dumps(scorer.shrinkage_.to_json(), indent=1, sort_keys=True))
    if contract is not None:
        (folder / _CONTRACT).write_text(json.dumps(contract, indent=1, sort_keys=True))
    sums = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != _CHECKSUMS}
    (folder / _CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
    return _sha256(folder / _CHECKSUMS)


def _verify(folder: Path, expected_digest: str | None, label: str) -> None:
    listing = folder / _CHECKSUMS
    if not listing.exists():
        raise ChecksumError(f"{label}: no {_CHECKSUMS} in the model artifacts; refusing to load an unverified model")
    if expected_digest is not None and _sha256(listing) != expected_digest:
        raise ChecksumError(f"{label}: {_CHECKSUMS} differs from the digest recorded in the registry (tampered?)")
    sums = json.loads(listing.read_text())
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != _CHECKSUMS}
    if present != set(sums):
        raise ChecksumError(f"{label}: artifact files {sorted(present ^ set(sums))} are not the registered set")
    for name, digest in sums.items():
        if _sha256(folder / name) != digest:
            raise ChecksumError(f"{label}: artifact {name} does not match its sha256 checksum; it was changed after "
                                "registration. Retrain or roll back to another version.")


def load_scorer(folder: Path, expected_digest: str | None = None, label: str = "model") -> Scorer:
    """Verify the checksums, then build the scorer from its safe-format files."""
    folder = Path(folder)
    _verify(folder, expected_digest, label)
    meta = json.loads((folder / "meta.json").read_text())
    kind = meta["kind"]
    from nextbest.training import scorers

    check_format(meta, label)

    loaders = {"lightgbm": scorers.BoosterScorer, "lightgbm_staged": scorers.StagedBooster, "logistic": scorers.LinearScorer, "blend": scorers.BlendScorer,
               "uplift_t_learner": scorers.UpliftScorer,
               "uplift_effect": scorers.EffectScorer, "uplift_s_learner": scorers.SLearnerScorer,
               "uplift_funnel": scorers.FunnelUpliftScorer, "send_time_net": scorers.SendTimeScorer}
    if kind in loaders:
        scorer = loaders[kind].load(folder)
    elif kind == "offer_net":  # a challenger ranking, not used by decisions: its module is a training one
        from nextbest.training.offer_net import OfferNetScorer

        scorer = OfferNetScorer.load(folder)
    else:
        raise ChecksumError(f"{label}: unknown model kind {kind!r}")
    contract = folder / _CONTRACT
    scorer.contract_ = json.loads(contract.read_text()) if contract.exists() else None
    if (folder / _SHRINKAGE).exists():  # models saved before it have none: serving uses their uplift as it is
        from nextbest.training.shrinkage import Shrinkage

        scorer.shrinkage_ = Shrinkage.from_json(json.loads((folder / _SHRINKAGE).read_text()))
    return scorer


def check_format(meta: dict, label: str = "model") -> None:
    """Refuse a model whose meta.json names a file format newer than this code reads (`scorers.MODEL_FORMAT`; no
    field: format 1, every model saved before it), with what to do: it would otherwise be read in part (e.g. an
    averaged arm's first fit alone)."""
    from nextbest.training.scorers import MODEL_FORMAT

    found = meta.get("format", 1)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ModelFormatError(f"{label}: meta.json names the file format {found!r}, which is not a format number (a "
                               "whole number from 1). Retrain the model, or roll back to another version (`nextbest "
                               "rollback MODEL`).")
    if found > MODEL_FORMAT:
        raise ModelFormatError(
            f"{label}: saved in model file format {found}, newer than this code reads (up to {MODEL_FORMAT}); "
            "loading it would read only part of the model. Upgrade nextbest to the version that trained it (the run's "
            "code_version tag in MLflow), or make a version this code trained the champion (`nextbest rollback "
            "MODEL` or `nextbest promote MODEL --version N`).")


def _load_pyfunc(data_path: str) -> Scorer:
    """MLflow pyfunc loader: `mlflow.pyfunc.load_model` on our models reads only the verified files."""
    return load_scorer(_model_folder(Path(data_path)))


def _model_folder(root: Path) -> Path:
    found = sorted(root.rglob(_CHECKSUMS))
    if not found:
        raise ChecksumError(f"no {_CHECKSUMS} under {root}; refusing to load an unverified model")
    return found[0].parent


# --- MLflow wiring ---------------------------------------------------------------------------------------

def code_version() -> str:
    """The git commit of the code that trained the model, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(settings: Settings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _experiment_title(name: str) -> str:
    return f"nextbest-{name}"


def _experiment(client, settings: Settings, name: str) -> str:
    title = _experiment_title(name)
    location = settings.artifact_dir.resolve() / name
    found = client.get_experiment_by_name(title)
    if found is not None:
        _follow_home(settings, found, location)
        return found.experiment_id
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(title, artifact_location=location.as_uri())


def _follow_home(settings: Settings, experiment, location: Path) -> None:
    """A copied or moved home writes its new runs into its own artifact folder, not into the original home's.

    MLflow keeps an experiment's artifact location as an absolute URI (the home it was created in) and has no API
    to change it, so in the home's own SQLite registry (the default store) the row is rewritten to this home. Only
    a location of ours (`.../mlartifacts/<model>`) is followed; a remote tracking store is left as it is.
    """
    import sqlite3
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    recorded = experiment.artifact_location
    if settings.mlflow_uri or not recorded.startswith("file:") or recorded == location.as_uri():
        return
    old = Path(url2pathname(urlparse(recorded).path))
    if old.parts[-2:] != (settings.artifact_dir.name, location.name):
        return
    location.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(settings.home / "mlflow.db", timeout=30)) as conn, conn:
        conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                     (location.as_uri(), int(experiment.experiment_id)))


def _version_digest(client, registered: str, version: str) -> str | None:
    return client.get_model_version(registered, version).tags.get("model_sha256")


def log_model(settings: Settings, name: str, scorer: Scorer, metrics: dict[str, float], params: dict[str, object],
              example: pd.DataFrame, charts: list[Path] = (), tags: dict[str, str] | None = None) -> tuple[str, str]:
    """One MLflow run: params, metrics, charts, the checksummed model (signature, input example); registered.

    The new version gets the `challenger` alias; returns (run id, version).
    """
    import mlflow
    from mlflow.models import infer_signature

    client = _client(settings)
    experiment = _experiment(client, settings, name)
    registered = registered_name(name)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment) as run:
        folder = Path(tmp) / "scorer"
        digest = save_scorer(scorer, folder, model_contract(settings, name, scorer))
        mlflow.log_params({k: (str(v)[:250]) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        mlflow.set_tags({"feature_service": scorer.feature_service, "model_sha256": digest,
                         "code_version": code_version(), **(tags or {})})
        for chart in charts:
            mlflow.log_artifact(str(chart), artifact_path="charts")
        example = synthetic_example(example)  # MLflow keeps the input example as a file: never a real customer's row
        signature = infer_signature(_signature_frame(example), np.asarray(scorer.predict(example), dtype="float64"))
        info = mlflow.pyfunc.log_model(name="model", loader_module="nextbest.training.registry", data_path=str(folder),
                                       code_paths=None, signature=signature, input_example=_signature_frame(example),
                                       pip_requirements=_requirements())
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Successfully registered ..." to stderr
            version = mlflow.register_model(info.model_uri, registered, tags={"model_sha256": digest}).version
    client.set_model_version_tag(registered, version, "run_id", run.info.run_id)
    client.set_registered_model_alias(registered, CHALLENGER, version)
    return run.info.run_id, str(version)


def model_contract(settings: Settings, name: str, scorer) -> dict:
    """What serving needs to use the model: its FeatureService, the type of each feature it reads as Feast served
    it at training time (and their digest), and the request columns the caller adds."""
    from nextbest.training.scorers import REQUEST_COLUMNS, input_columns

    request = REQUEST_COLUMNS.get(name, ())
    reads = [c for c in input_columns(scorer) if c not in request]
    try:
        from nextbest.features.store import feature_store

        fs = feature_store(settings).get_feature_service(scorer.feature_service)
        types = {f.name: str(f.dtype) for p in fs.feature_view_projections for f in p.features}
    except Exception:  # noqa: BLE001 - a model fitted outside a Feast repository (tests, notebooks): names only
        types = {}
    inputs = {c: types.get(c) for c in reads}
    return {"feature_service": scorer.feature_service, "request_columns": list(request), "inputs": inputs,
            "schema_sha256": schema_digest(inputs)}


def schema_digest(inputs: dict[str, str | None]) -> str:
    return hashlib.sha256(json.dumps(sorted(inputs.items()), default=str).encode()).hexdigest()


def synthetic_example(frame: pd.DataFrame) -> pd.DataFrame:
    """One made-up row with `frame`'s columns and types: the median of each number and the most common value
    of each other column (a placeholder where no value repeats, e.g. an id), so it is nobody's row."""
    row: dict[str, object] = {}
    for col in frame.columns:
        s = frame[col].dropna()
        if s.empty:
            row[col] = frame[col].iloc[:1].tolist()[0] if len(frame) else None
        elif pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            counts = s.astype(str).value_counts()
            row[col] = s[s.astype(str) == counts.index[0]].iloc[0] if counts.iloc[0] > 1 else "example"
        else:
            median = float(s.median())
            row[col] = round(median) if pd.api.types.is_integer_dtype(s) else median
    out = pd.DataFrame([row], columns=frame.columns)
    for col, dtype in frame.dtypes.items():
        try:
            out[col] = out[col].astype(dtype)
        except (TypeError, ValueError):
            pass  # e.g. a placeholder in a categorical column: keep it as text
    return out


def _signature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    # MLflow's schema has no nullable ints/bools: describe them as doubles, as the scorers read them anyway.
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == bool or pd.api.types.is_integer_dtype(out[col]):
            out[col] = out[col].astype("float64")
        elif out[col].dtype == object:
            out[col] = out[col].astype(str)
    return out


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("lightgbm", "torch", "pandas", "numpy")]


def _champion_version(client, registered: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(registered, CHAMPION).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _artifact_uri(client, settings: Settings, name: str, registered: str, version: str) -> str:
    """Where a version's files are in this home.

    MLflow records absolute file URIs, into the home the model was logged in; re-rooted under this home's
    artifact folder (same path below the experiment's folder), a copied or moved home loads its own files.
    Where this home has no such folder (a run logged after the copy, which MLflow put in the experiment's
    original folder before `_follow_home` existed), and for a remote artifact store, the URI is used as recorded.
    """
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    uri = client.get_model_version_download_uri(registered, version)
    experiment = client.get_experiment_by_name(_experiment_title(name))
    if experiment is None or not uri.startswith("file:") or not experiment.artifact_location.startswith("file:"):
        return uri
    root = Path(url2pathname(urlparse(experiment.artifact_location).path))
    try:
        below = Path(url2pathname(urlparse(uri).path)).relative_to(root)
    except ValueError:  # logged somewhere else on purpose: trust the registry
        return uri
    local = settings.artifact_dir.resolve() / name / below
    return local.as_uri() if local.is_dir() else uri


def load_version(settings: Settings, name: str, version: str) -> Scorer:
    """Download one registered version, verify its checksums (files and registry digest), load it."""
    import os

    import mlflow

    # A progress bar per download would flood the logs of the decision service that calls this.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = _client(settings)
    registered = registered_name(name)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=_artifact_uri(client, settings, name, registered, version),
                                                    dst_path=tmp, tracking_uri=settings.tracking_uri)
        return load_scorer(_model_folder(Path(local)), _version_digest(client, registered, version),
                           label=f"{registered} version {version}")


def gate(settings: Settings, name: str, version: str, run_id: str, challenger_score: float,
         champion_score_fn, defer: bool = False, refuse: str | None = None,
         paired_fn=None) -> dict[str, object]:
    """Promote `version` only if it beats the current champion on the same holdout; log the comparison.

    `champion_score_fn(scorer)` scores the champion on the challenger's holdout with the primary metric.
    With `defer`, a model that has a champion is not promoted here whatever the holdout says: the decision
    (`better_on_holdout`) waits for the policy gate (`policy_gate`), which judges the models the policy uses
    together, by the policy's value. A first model still becomes champion at once: there is nothing to compare.
    `refuse`: why this model must not be promoted whatever the champion scores (no better than chance, ...):
    it stays registered, with the reason, and the champion (or the rule-based fallback) keeps serving.
    `paired_fn(scorer)`, where given, judges the champion paired with the challenger on the same holdout instead
    (a dict with `champion`, `difference` and its interval `low`-`high`, e.g. `uplift.paired_qini`): the challenger
    is promoted only when the whole interval is above 0, not on a higher score the holdout's noise can give.
    """
    from mlflow import MlflowClient

    client = _client(settings)
    registered = registered_name(name)
    metric = primary_metric(name)
    current = _champion_version(client, registered)
    decision: dict[str, object] = {"metric": metric, "challenger_version": version, "challenger": challenger_score,
                                   "champion_version": current, "champion": None}
    if refuse:
        decision.update(promoted=False, refused=True, reason=refuse)
    elif current is None:
        decision.update(promoted=True, reason="no champion yet")
    else:
        paired = None
        try:
            champion = load_version(settings, name, current)
            if paired_fn is not None:
                paired = paired_fn(champion)
                champion_score = float(paired["champion"])
            else:
                champion_score = float(champion_score_fn(champion))
        except KeyError as err:  # the champion reads features this data no longer has
            champion_score = float("nan")
            decision["reason"] = f"champion cannot score this holdout ({err})"
        decision["champion"] = champion_score
        if np.isnan(champion_score) and not np.isfinite(challenger_score):  # the holdout judges neither: no evidence
            decision["promoted"] = False
            decision["reason"] = (f"{metric} undefined on this holdout for the challenger and the champion (too few rows "
                                  "or outcomes in it): the champion stays")
        elif np.isnan(champion_score):
            decision["promoted"] = True
            decision.setdefault("reason", "champion score undefined")
        elif paired is not None and np.isfinite(paired["low"]):
            decision["promoted"] = bool(paired["low"] > 0)
            decision["difference"] = [float(paired[k]) for k in ("difference", "low", "high")]
            decision["reason"] = (f"{metric} {challenger_score:.4f} vs champion {champion_score:.4f} on the same holdout: "
                                  f"difference {paired['difference']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}] "
                                  f"(paired bootstrap over {int(paired['users']):,} users, {int(paired['draws'])} draws); "
                                  + ("surely better" if decision["promoted"] else "not surely better: the champion stays"))
        else:
            decision["promoted"] = bool(challenger_score > champion_score)
            decision["reason"] = (f"{metric} {challenger_score:.4f} vs champion {champion_score:.4f} on the same holdout")
        if defer:
            decision.update(better_on_holdout=decision["promoted"], promoted=False, deferred=True)
    if decision["promoted"]:
        _set_champion(client, registered, version, current)
    tracking = MlflowClient(tracking_uri=settings.tracking_uri)
    if decision["champion"] is not None and np.isfinite(decision["champion"]):
        tracking.log_metric(run_id, f"gate_champion_{metric}", float(decision["champion"]))
    tracking.log_metric(run_id, f"gate_challenger_{metric}", float(challenger_score))
    tracking.set_tag(run_id, "gate_decision", "promoted" if decision["promoted"] else
                     "waiting for the policy gate" if decision.get("deferred") else
                     "refused" if decision.get("refused") else "kept champion")
    tracking.log_dict(run_id, decision, "gate.json")
    return decision


def policy_gate(settings: Settings, versions: dict[str, str], chosen: dict[str, str],
                decision: dict[str, object]) -> dict[str, tuple[str | None, str]]:
    """Record the policy gate's `decision` on each challenger's run and promote those in `chosen`.

    `versions`: model name -> challenger version judged together. Returns {name: (old champion, new)} for
    the models promoted ({} when the champions stay).
    """
    from mlflow import MlflowClient

    client = _client(settings)
    tracking = MlflowClient(tracking_uri=settings.tracking_uri)
    changed = {}
    for name, version in versions.items():
        promoted = chosen.get(name) == version
        run_id = client.get_model_version(registered_name(name), version).tags.get("run_id")
        if run_id:
            tracking.set_tag(run_id, "gate_decision", "promoted by the policy gate" if promoted
                             else "kept champion (policy gate)")
            tracking.log_dict(run_id, decision, "policy_gate.json")
        if promoted:
            changed[name] = promote(settings, name, version)
    return changed


def _set_champion(client, registered: str, version: str, previous: str | None) -> None:
    if previous is not None and previous != version:
        client.set_model_version_tag(registered, version, "previous_champion", previous)
    client.set_registered_model_alias(registered, CHAMPION, version)


def promote(settings: Settings, name: str, version: str | None = None) -> tuple[str | None, str]:
    """Make `version` (default: the challenger) the champion; returns (old champion, new champion)."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    registered = registered_name(name)
    try:
        target = version or str(client.get_model_version_by_alias(registered, CHALLENGER).version)
        client.get_model_version(registered, target)
    except MlflowException as err:
        raise LookupError(f"{registered}: no version {version or '@challenger'} to promote ({err.error_code})") from None
    current = _champion_version(client, registered)
    _set_champion(client, registered, target, current)
    return current, target


def rollback(settings: Settings, name: str) -> tuple[str, str]:
    """Give the champion alias back to the version that held it before; returns (old, restored)."""
    client = _client(settings)
    registered = registered_name(name)
    current = _champion_version(client, registered) if _model_exists(client, registered) else None
    if current is None:
        raise LookupError(f"{registered} has no champion to roll back")
    previous = client.get_model_version(registered, current).tags.get("previous_champion")
    if previous is None:
        raise LookupError(f"{registered} version {current} has no previous champion to roll back to")
    client.set_registered_model_alias(registered, CHAMPION, previous)
    return current, previous


def _model_exists(client, registered: str) -> bool:
    return bool(client.search_registered_models(filter_string=f"name = '{registered}'"))


def list_versions(settings: Settings) -> list[dict[str, object]]:
    """Every registered version: name, version, aliases, primary metric, creation time."""
    if not _store_exists(settings):
        return []
    client = _client(settings)
    rows = []
    labelled = {m.name.removeprefix("nextbest-"): m.name
                for m in client.search_registered_models(filter_string=f"name LIKE 'nextbest-{LABEL_PREFIX}%'")}
    for short, registered in {**MODEL_NAMES, **labelled}.items():
        if not _model_exists(client, registered):
            continue
        model = client.get_registered_model(registered)
        aliases: dict[str, list[str]] = {}
        for alias, v in (model.aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{registered}'"):
            metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            rows.append({"model": short, "version": str(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                         "metric": primary_metric(short), "value": metrics.get(primary_metric(short)),
                         "created": pd.Timestamp(mv.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M")})
    return sorted(rows, key=lambda r: (r["model"], int(r["version"])))


def _store_exists(settings: Settings) -> bool:
    uri = settings.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def load_champions(settings: Settings, kinds: tuple[str, ...] | None = None, cache: dict | None = None) -> dict[str, Champion]:
    """Every model's champion (or only `kinds`'), checksums verified; {} if none is registered.

    With `cache` ((registry, model, version) -> Champion), a version already loaded is not downloaded again: asking
    costs one registry query per model, loading happens only when a champion alias moves.
    """
    if not _store_exists(settings):
        return {}
    from mlflow.exceptions import MlflowException

    # label models (label-NAME) are loaded only when asked for by name: the decision service does not use them
    names = dict(MODEL_NAMES) if kinds is None else \
        {k: registered_name(k) for k in kinds if k in MODEL_NAMES or k.startswith(LABEL_PREFIX)}
    try:
        client = _client(settings)
        versions = {}
        for short, registered in names.items():
            if _model_exists(client, registered):
                v = _champion_version(client, registered)
                if v is not None:
                    versions[short] = v
    except (MlflowException, OSError, Exception) as err:  # sqlalchemy and network errors alike
        raise RegistryUnavailable(f"model registry at {settings.tracking_uri} cannot be reached: {err}") from err
    out = {}
    for short, v in versions.items():
        key = (settings.tracking_uri, short, v)
        champion = cache.get(key) if cache is not None else None
        if champion is None:
            champion = Champion(short, v, load_version(settings, short, v))
            if cache is not None:
                cache[key] = champion
        out[short] = champion
    return out
