"""The README's marketer's workflow stays true: its campaign YAML is a valid campaign, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from nextbest.campaigns.model import CampaignSpec
from nextbest.pipelines.cli import app

SECTION = Path(__file__).resolve().parents[1].joinpath("README.md").read_text().split("## Campaigns")[1].split("\n## ")[0]


def test_the_readme_campaign_is_a_valid_campaign():
    block = re.search(r"```yaml\n(.*?)```", SECTION, re.S).group(1)
    spec = CampaignSpec.model_validate(yaml.safe_load(block))
    assert len(spec.offers[0].variants) == 4 and spec.audience == "winback"


def test_every_command_in_the_readme_workflow_exists():
    cli = get_command(app)
    used = re.findall(r"^nextbest (segment|campaign) ([a-z-]+)", SECTION, re.M)
    assert len(used) >= 12
    for group, command in used:
        assert command in cli.commands[group].commands, f"nextbest {group} {command}"
    from nextbest.serving.service import NextBest

    routes = {api.route for api in NextBest.apis.values()}
    named = re.findall(r"`(/campaigns/[a-z_]+)`", SECTION)
    assert len(named) >= 7 and set(named) <= routes, set(named) - routes
