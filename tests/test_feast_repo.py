"""The Feast repository under <home>/feast is a real one: Feast's own command line works on it, even moved."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def test_feast_cli_reads_the_repository_from_its_feature_store_yaml_after_a_move(built, tmp_path):
    moved = tmp_path / "elsewhere" / "feast"
    shutil.copytree(built.feast_dir, moved)
    config = yaml.safe_load((moved / "feature_store.yaml").read_text())
    assert config["project"] == built.project and config["registry"]["path"] == "registry.db"
    feast = str(Path(sys.executable).with_name("feast"))
    views = subprocess.run([feast, "-c", str(moved), "feature-views", "list"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert views.returncode == 0, views.stderr[-2000:]
    assert all(name in views.stdout for name in ("profile", "behaviour", "channel", "tags"))
    services = subprocess.run([feast, "-c", str(moved), "feature-services", "list"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    assert services.returncode == 0 and "decision_v1" in services.stdout
