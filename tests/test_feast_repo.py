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


def test_feast_materialize_on_the_yaml_loads_what_nextbest_loads(built, tmp_path):
    # Feast's own `feast materialize`, run on <home>/feast by its feature_store.yaml alone, refills a view that was
    # emptied with the same newest values per user as `nextbest features materialize` wrote.
    import sqlite3

    from nextbest.features.store import feature_store
    from tests.conftest import copy_home

    home = copy_home(built, tmp_path / "home")
    ids = [{"user_id": f"u{i:04d}"} for i in range(200)]
    tags = [f"tags:{f.name}" for f in feature_store(home).get_feature_view("tags").features]
    before = feature_store(home).get_online_features(features=tags, entity_rows=ids).to_dict()
    with sqlite3.connect(home.feast_dir / "online.db") as c:
        c.execute(f'DELETE FROM "{home.project}_tags"')
    emptied = feature_store(home).get_online_features(features=tags, entity_rows=ids).to_dict()
    assert all(v is None for v in emptied["lifecycle_stage"])
    feast = str(Path(sys.executable).with_name("feast"))
    run = subprocess.run([feast, "-c", str(home.feast_dir), "materialize", "--views", "tags", "--disable-event-timestamp"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    after = feature_store(home).get_online_features(features=tags, entity_rows=ids).to_dict()
    assert after == before and sum(v is not None for v in after["lifecycle_stage"]) == 200
