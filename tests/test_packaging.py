"""Packaging: one `nextbest` namespace, no generic top-level names, a wheel that works in a clean venv."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "simulation", "training", "serving", "campaigns", "monitoring", "pipelines")


def _python_files() -> list[Path]:
    out = []
    for folder in (*PACKAGES, "tests", "benchmarks"):
        out += sorted((ROOT / folder).rglob("*.py"))
    return out


def test_every_import_of_our_code_goes_through_the_nextbest_namespace():
    bare = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, f"imports outside the nextbest namespace: {bare[:10]}"


def venv_with_wheel(env_dir: Path, wheel: Path) -> tuple[Path, str]:
    """A clean venv with `wheel` alone installed (its python, its site-packages).

    The dependencies come from this venv's site-packages through a plain path entry: a path entry does
    not run the .pth files there, so the editable checkout stays out and `nextbest` is the wheel's.
    """
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return py, site


@pytest.mark.slow
def test_the_wheel_installs_into_a_clean_venv_and_the_cli_runs_there(tmp_path):
    # Build from a copy: setuptools leaves build/ and egg-info folders in the tree it builds.
    src = tmp_path / "src"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("nextbest-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "nextbest" in tops and not tops & set(PACKAGES), f"generic top-level names in the wheel: {tops}"

    env_dir = tmp_path / "venv"
    py, site = venv_with_wheel(env_dir, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEXTBEST_HOME")}
    where = subprocess.run([str(py), "-c", "import nextbest.serving.service as s; print(s.__file__)"], cwd=outside,
                           env=env, check=True, capture_output=True, text=True, timeout=300).stdout.strip()
    assert where.startswith(site), f"nextbest.serving came from {where}, not the installed wheel"
    cli = subprocess.run([str(env_dir / "bin" / "nextbest"), "--help"], cwd=outside, env=env, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    for command in ("simulate", "ingest", "train", "serve", "retrain"):
        assert command in cli.stdout
