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


def test_the_readme_workflows_options_and_http_commands_are_the_codes():
    from typing import get_args

    from nextbest.campaigns.api import CampaignCommand

    cli = get_command(app)
    lines = re.findall(r"^nextbest (?:segment|campaign) .*$", SECTION, re.M)
    for line in lines:
        _, group, command, *rest = line.split("#")[0].split()
        options = {word.split("=")[0] for word in rest if word.startswith("--")}
        known = {opt for param in cli.commands[group].commands[command].params for opt in param.opts}
        assert options <= known, (line, options - known)
    assert any("--as-of" in line for line in lines) and any("--actor" in line for line in lines)
    listed = re.search(r'"command": "([a-z|]+)"', SECTION).group(1).split("|")
    assert set(listed) == set(get_args(CampaignCommand.model_fields["command"].annotation))
