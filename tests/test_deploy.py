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
from nextbest.features.settings import Settings
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    home = tmp_path / "home"
    shutil.copytree(built.home, home, ignore=shutil.ignore_patterns("ledger.db*", "logs"))
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
