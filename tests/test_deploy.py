"""Shipping: the pinned dependencies, the Bento, and the production stack in deploy/ (as far as it runs here)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from nextbest.features.settings import Settings
from tests.conftest import copy_home
from tests.test_packaging import venv_with_wheel
from tests.test_serving_runtime import consenting_user

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-", ".")):
            req = Requirement(line)
            [spec] = req.specifier
            out[canonicalize_name(req.name)] = spec.version
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else proc.returncode
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} was not ready within {timeout_s:.0f} s"
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


# --- pinned dependencies -------------------------------------------------------------------------------


def test_the_lock_pins_every_runtime_dependency_at_the_version_the_tests_run_against():
    check = subprocess.run([sys.executable, str(DEPLOY / "lock.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    pins = _pins(DEPLOY / "requirements.txt")
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in deploy/requirements.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {line!r}"
    assert "nextbest" not in pins  # the project itself travels as its wheel


# --- the Bento -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_that_serves_decisions_from_its_own_wheel(built, tmp_path):
    build = PYPROJECT["tool"]["bentoml"]["build"]
    [wheel_path] = build["python"]["wheels"]
    assert wheel_path == f"dist/nextbest-{PYPROJECT['project']['version']}-py3-none-any.whl"

    # The build context as `make bento` leaves it: pyproject.toml, the lock and the freshly built wheel.
    ctx = tmp_path / "ctx"
    (ctx / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", ctx)
    shutil.copy(DEPLOY / "requirements.txt", ctx / "deploy")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(ctx / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    assert (ctx / wheel_path).exists()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).parent / "bentoml"
    out = subprocess.run([str(bentoml), "build", ".", "--output", "tag"], cwd=ctx, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    assert name == "nextbest"
    bento = tmp_path / "bentoml" / "bentos" / name / version
    assert (bento / "bento.yaml").read_text().startswith("service: nextbest.serving.service:NextBest")
    assert _pins(bento / "env/python/requirements.txt") == _pins(DEPLOY / "requirements.txt")
    [wheel] = (bento / "env/python/wheels").glob("nextbest-*.whl")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (bento / "env/python/install.sh").read_text()

    # Serve the Bento with an interpreter whose nextbest is the Bento's wheel (its dependencies are this
    # venv's: installing the pinned requirements would download them).
    py, site = venv_with_wheel(tmp_path / "venv", wheel)
    home = copy_home(built, tmp_path / "home", fresh_ledger=True).home
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "NEXTBEST_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(py), "-c", "import nextbest.serving.service as s; print(s.__file__)"], cwd=tmp_path,
                           env=env, check=True, capture_output=True, text=True, timeout=120).stdout.strip()
    assert where.startswith(site), f"nextbest came from {where}, not the Bento's wheel"
    proc = subprocess.Popen([str(py), "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_ready(url, proc)
        user = consenting_user(Settings(home=home))
        r = httpx.post(f"{url}/decide", json={"user_id": user, "context": {"campaign_id": "bento"}}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user and r.json()["decision_id"]
    finally:
        _stop(proc)


# --- the production stack (deploy/): what can be checked without a container runtime -------------------

COMPOSE = DEPLOY / "docker-compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nextbest.json"


def _compose() -> dict:
    import yaml

    return yaml.safe_load(COMPOSE.read_text())  # resolves the file's anchors and `<<` merge keys as Compose does


def _compose_errors(doc: dict) -> list[str]:
    """Errors of `doc` against the compose-spec JSON schema (the copy check-jsonschema ships: nothing downloaded)."""
    import json
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("check_jsonschema").joinpath("builtin_schemas/vendor/compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_compose_file_is_valid_against_the_compose_spec_schema():
    doc = _compose()
    assert _compose_errors(doc) == []
    broken = _compose()
    broken["services"]["redis"]["imagee"] = "redis:7.2"
    broken["services"]["nextbest"]["ports"] = "127.0.0.1:3000:3000"  # must be a list
    assert len(_compose_errors(broken)) >= 2  # the check can fail


def test_the_stack_has_the_production_shape():
    services = _compose()["services"]
    assert {"redis", "mlflow", "init", "nextbest", "prometheus", "grafana"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"  # persistence on
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    svc = services["nextbest"]
    assert svc["deploy"]["replicas"] >= 2 and svc["command"] == ["serve"]
    env = svc["environment"]
    assert env["NEXTBEST_ONLINE_STORE"] == env["NEXTBEST_LEDGER_BACKEND"] == "redis"  # shared by every replica
    assert env["NEXTBEST_REDIS_URL"].split(":")[0] == "redis" and env["NEXTBEST_MLFLOW_URI"] == "http://mlflow:5000"
    grace = float(env["NEXTBEST_SHUTDOWN_GRACE_S"])
    assert float(svc["stop_grace_period"].removesuffix("s")) > grace + 15  # the drain and the supervisor's margin
    assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for name, s in services.items():
        for port in s.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
        for volume in s.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./exports":
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["nextbest"]' in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile  # `nextbest serve` is PID 1
    assert "COPY deploy/requirements.txt" in dockerfile and "COPY dist/nextbest-*.whl" in dockerfile
    [index] = PYPROJECT["tool"]["bentoml"]["build"]["python"]["extra_index_url"]
    assert f"--extra-index-url {index}" in dockerfile  # the same torch build as the Bento


def test_the_mlflow_server_command_uses_options_this_mlflow_has():
    cmd = _compose()["services"]["mlflow"]["command"]
    assert cmd[0] == "server"
    help_text = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "server", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    import re

    for option in (a for a in cmd if a.startswith("--")):
        assert re.search(rf"^\s+(-\w, )?{option} ", help_text, re.M), f"mlflow server has no option {option}"
    assert not re.search(r"^\s+(-\w, )?--no-such-option ", help_text, re.M)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make test` installs it (apt-get install prometheus)")
    return path


def test_prometheus_config_passes_promtool_and_scrapes_every_replica(tmp_path):
    import yaml

    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "nextbest"]
    # The scrape sends the API key the compose file mounts as a secret; promtool wants the file to exist.
    secret = job["authorization"]["credentials_file"]
    compose = _compose()
    [mount] = [m for m in compose["services"]["prometheus"]["secrets"] if m["source"] == "nextbest_api_key"]
    assert secret == f"/run/secrets/{mount['target']}" and job["authorization"]["type"] == "Bearer"
    assert compose["secrets"]["nextbest_api_key"]["environment"] == "NEXTBEST_API_KEY"
    (tmp_path / "key").write_text("k" * 32)
    local = tmp_path / "prometheus.yml"
    local.write_text((DEPLOY / "prometheus.yml").read_text().replace(secret, str(tmp_path / "key")))
    check = subprocess.run([_promtool(), "check", "config", str(local)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["nextbest"] and sd["port"] == int(compose["services"]["nextbest"]["environment"]["NEXTBEST_PORT"])
    assert job["metrics_path"] == "/metrics"


def _dashboard_exprs() -> list[str]:
    import json

    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_grafana_provisioning_and_the_dashboard_queries_are_valid(tmp_path):
    import json

    import yaml

    [ds] = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/nextbest.yaml").read_text())["providers"]
    grafana = _compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])
    # Every query parses as PromQL: promtool checks them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"nextbest:dashboard_query_{i}", "expr": e}
                                                         for i, e in enumerate(_dashboard_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]}))
    assert subprocess.run([_promtool(), "check", "rules", str(bad)], capture_output=True, timeout=60).returncode != 0


def _metric_names(exprs: list[str]) -> set[str]:
    """The service's metric names a query reads (Prometheus' own `up` aside)."""
    import re

    return set(re.findall(r"\b((?:nextbest|bentoml)_[a-z0-9_]+)\b", " ".join(exprs)))


def _declared_names() -> set[str]:
    """Sample names the service's own metrics can have, also those with no sample yet (no models loaded)."""
    from nextbest.serving.metrics import metrics

    out = set()
    for collector in vars(metrics()).values():
        for family in collector.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            out |= {family.name + s for s in suffixes}
    return out


@pytest.mark.slow
@pytest.mark.redis
def test_the_service_starts_with_the_compose_environment_and_exports_the_dashboards_metrics(redis_url, tmp_path):
    import redis

    from tests.conftest import build_store, make_raw

    compose_env = _compose()["services"]["nextbest"]["environment"]
    port = _free_port()
    db = 3  # a Redis database of its own on the session's redis-server
    here = {  # what differs on this machine: loopback only, the test's redis-server, no MLflow server
        "NEXTBEST_HOME": str(tmp_path / "home"),
        "NEXTBEST_REDIS_URL": f"{redis_url},db={db}",
        "NEXTBEST_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NEXTBEST_HOST": "127.0.0.1",
        "NEXTBEST_PORT": str(port),
    }
    assert set(here) <= set(compose_env)
    env = {**{k: str(v) for k, v in compose_env.items()}, **here}
    settings = Settings(**{k.removeprefix("NEXTBEST_").lower(): v for k, v in env.items()})
    assert settings.online_store == settings.ledger_backend == "redis"
    build_store(settings, make_raw(), tmp_path / "csv")  # features materialised into Redis

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")} | env
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nextbest"), *_compose()["services"]["nextbest"]["command"]],
                            env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        ids = [f"u{i:04d}" for i in range(3, 43)]
        r = httpx.post(f"{url}/decide_batch", json={"user_ids": ids, "context": {"campaign_id": "compose"}}, timeout=60)
        assert r.status_code == 200, r.text
        decisions = r.json()["decisions"]
        assert not any("features_unavailable" in d["degraded_reasons"] for d in decisions)  # features read from Redis
        host, redis_port = redis_url.split(":")
        ledger = redis.Redis(host=host, port=int(redis_port), db=db)
        acted = [d["decision_id"] for d in decisions if d["actions"]]
        assert acted and all(ledger.exists(f"d:{i}") for i in acted)  # the ledger is the shared Redis
        scraped = {line.split("{")[0].split(" ")[0] for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                   if line and not line.startswith("#")}
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
    assert rc == 0, proc.stderr.read().decode()[-3000:]
    used = _metric_names(_dashboard_exprs())
    assert used and used <= scraped | _declared_names(), used - scraped - _declared_names()
    assert {"nextbest_decide_seconds_bucket", "nextbest_decisions_total", "bentoml_service_request_total"} <= scraped
