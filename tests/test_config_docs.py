"""The settings page docs/configuration.md is generated from the Settings object and kept current."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.pipelines.cli import app
from nextbest.pipelines.config_docs import readers, settings_page

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"


def test_the_settings_page_is_the_generated_one():
    assert PAGE.read_text() == settings_page(), \
        "docs/configuration.md is stale: run `.venv/bin/nextbest config docs --output docs/configuration.md`"


def test_every_setting_is_on_the_page_with_its_variable_default_and_a_description():
    page = settings_page()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description: add Field(..., description=...)"
        [row] = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        assert f"`NEXTBEST_{name.upper()}`" in row and field.description in row
        assert ("unset" if field.default is None else f"`{field.default}`") in row


def test_readers_come_from_the_code_including_reads_through_derived_paths():
    who = readers()
    assert who["shutdown_grace_s"] == ["serving", "pipelines"]  # the worker's drain and the supervisor's deadline
    assert "serving" in who["ledger_backend"] and "training" in who["mlflow_uri"]  # the latter via tracking_uri
    assert "serving" in who["home"]  # via ledger_path, log_dir, ...
    assert who["host"] == ["pipelines"]  # bentoml is told the address on its command line
    assert who["workers"] == ["serving"]  # read as `Settings().workers` in the service decorator


def test_config_docs_check_fails_on_a_stale_page(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(settings_page().replace("`25.0`", "`30.0`"))
    result = CliRunner().invoke(app, ["config", "docs", "--output", str(stale), "--check"])
    assert result.exit_code == 1 and "stale" in result.output
    assert CliRunner().invoke(app, ["config", "docs", "--output", str(stale)]).exit_code == 0
    assert CliRunner().invoke(app, ["config", "docs", "--output", str(stale), "--check"]).exit_code == 0
