"""`nextbest segment ...` and `nextbest campaign ...`: audiences, campaigns with approval, their execution."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from nextbest.features.settings import Settings

__all__ = ["register", "open_store"]

Actor = Annotated[str, typer.Option("--actor", help="who you are (recorded with every change and approval)")]


def open_store(settings: Settings):
    from nextbest.campaigns.store import CampaignStore, store_path

    return CampaignStore(store_path(settings.home), four_eyes=settings.campaign_four_eyes)


def _guarded(fn):
    """Campaign and segment mistakes as a message and exit code 2 (see cli.run_guarded)."""
    from pydantic import ValidationError

    from nextbest.campaigns.execution import ExecutionError
    from nextbest.campaigns.lifecycle import TransitionError
    from nextbest.campaigns.segments import SegmentError
    from nextbest.campaigns.store import NotFound
    from nextbest.pipelines.cli import UserError, run_guarded
    from nextbest.serving.runtime import UserError as RequestError

    def body():
        try:
            return fn()
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'campaign'}: {e['msg']}" for e in err.errors()[:5])
            raise UserError(f"the campaign file is not valid: {problems}") from None
        except (SegmentError, TransitionError, ExecutionError, NotFound, RequestError) as err:
            raise UserError(str(err)) from None

    return run_guarded(body)


def _as_of(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _read_spec(path: Path):
    import yaml

    from nextbest.campaigns.model import CampaignSpec
    from nextbest.pipelines.cli import UserError

    if not path.exists():
        raise UserError(f"{path}: no such file; write the campaign as YAML or JSON (see the README's marketer's workflow)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path.name}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: a campaign is a mapping with name, audience, offers, ...")
    return CampaignSpec.model_validate(data)


def _print(data: object) -> None:
    from nextbest.pipelines.console import console

    console.print_json(json.dumps(data, default=str))


def register(app: typer.Typer) -> None:
    """Add `nextbest segment` and `nextbest campaign` to the CLI."""
    segment_app = typer.Typer(help="Saved audiences (segments) in the eligibility rule language.", no_args_is_help=True)
    campaign_app = typer.Typer(help="Campaigns: create, approve, start, run; copy experiments.", no_args_is_help=True)
    app.add_typer(segment_app, name="segment")
    app.add_typer(campaign_app, name="campaign")

    @segment_app.command("create")
    def segment_create(
        name: Annotated[str, typer.Argument(help="segment name, e.g. lapsed_buyers")],
        rule: Annotated[str, typer.Argument(help="e.g. 'lifecycle_stage in [customer] and recency_days >= 30'")],
        description: Annotated[str, typer.Option(help="what the audience is for")] = "",
        replace: Annotated[bool, typer.Option(help="change the rule of an existing segment")] = False,
    ) -> None:
        """Save a segment after checking its rule against the feature tables; prints its size now."""
        from nextbest.campaigns import segments

        def body() -> dict:
            settings = Settings()
            store = open_store(settings)
            columns = set(segments.table_columns(settings.feature_dir))
            if not columns:
                raise segments.SegmentError("no feature tables yet: run `nextbest features build` first")
            seg = store.save_segment(segments.Segment(name, rule, description), columns, replace)
            return dict(name=seg.name, rule=seg.rule, users=segments.count(settings.feature_dir, seg.rule,
                                                                             store.segment_rule))

        _print(_guarded(body))

    @segment_app.command("list")
    def segment_list() -> None:
        """The saved segments."""
        _print(_guarded(lambda: [vars(s) for s in open_store(Settings()).segments()]))

    @segment_app.command("show")
    def segment_show(name: str) -> None:
        """A segment's rule and the segments it refers to."""
        from nextbest.campaigns.segments import referenced

        def body() -> dict:
            seg = open_store(Settings()).segment(name)
            return {**vars(seg), "refers_to": referenced(seg.rule)}

        _print(_guarded(body))

    @segment_app.command("count")
    def segment_count(
        name: str,
        as_of: Annotated[datetime | None, typer.Option("--as-of", help="point in time (features as of then); "
                                                       "default: the latest")] = None,
        online: Annotated[bool, typer.Option(help="evaluate on the online store (now) instead of the offline tables")] = False,
    ) -> None:
        """How many users are in the segment (offline, point-in-time; or online now)."""
        from nextbest.campaigns import segments

        def body() -> dict:
            settings = Settings()
            store = open_store(settings)
            rule = store.segment(name).rule
            if online:
                if as_of is not None:
                    raise segments.SegmentError("--online counts now; leave out --as-of")
                return dict(segment=name, where="online", users=_online_count(settings, rule, store))
            return dict(segment=name, where="offline", as_of=_as_of(as_of) or "latest",
                        users=segments.count(settings.feature_dir, rule, store.segment_rule, _as_of(as_of)))

        _print(_guarded(body))

    @segment_app.command("export")
    def segment_export(
        name: str,
        out: Annotated[Path, typer.Option(help="a .parquet or .csv file")],
        as_of: Annotated[datetime | None, typer.Option("--as-of", help="point in time; default: the latest")] = None,
    ) -> None:
        """Write the segment's members (user_id and the features its rule reads) to Parquet or CSV."""
        from nextbest.campaigns import segments

        def body() -> dict:
            settings = Settings()
            store = open_store(settings)
            n = segments.export(settings.feature_dir, store.segment(name).rule, store.segment_rule, out, _as_of(as_of))
            return dict(segment=name, users=n, written_to=str(out))

        _print(_guarded(body))

    @segment_app.command("columns")
    def segment_columns() -> None:
        """The features a segment rule may use, with the table each comes from."""
        from nextbest.campaigns.segments import table_columns

        _print(_guarded(lambda: {k: f"{t} ({ty})" for k, (t, ty) in table_columns(Settings().feature_dir).items()}))

    # --- campaigns ------------------------------------------------------------------------------------

    @campaign_app.command("create")
    def campaign_create(
        spec_file: Annotated[Path, typer.Argument(help="the campaign as YAML or JSON")],
        actor: Actor,
        campaign_id: Annotated[str | None, typer.Option("--id", help="campaign id (default: generated)")] = None,
    ) -> None:
        """Create a draft campaign; prints it with the sample its copy experiments need."""
        _print(_guarded(lambda: _write_spec(spec_file, lambda store, spec: store.create(spec, actor, campaign_id))))

    @campaign_app.command("edit")
    def campaign_edit(
        campaign_id: str,
        spec_file: Annotated[Path, typer.Argument(help="the changed campaign as YAML or JSON")],
        actor: Actor,
    ) -> None:
        """Change a campaign (a new version); an approved or running one goes back for approval."""
        _print(_guarded(lambda: _write_spec(spec_file, lambda store, spec: store.edit(campaign_id, spec, actor))))

    @campaign_app.command("list")
    def campaign_list() -> None:
        """Every campaign with its state and version."""
        _print(_guarded(lambda: [dict(id=c.id, name=c.spec.name, state=c.state, version=c.version,
                                      priority=c.spec.priority) for c in open_store(Settings()).list()]))

    @campaign_app.command("show")
    def campaign_show(campaign_id: str) -> None:
        """A campaign: its spec, state, approvals, history and run progress."""
        from nextbest.campaigns.api import show

        _print(_guarded(lambda: show(open_store(Settings()), campaign_id)))

    for command, doc in (("submit", "Submit a draft (or rejected) campaign for approval."),
                         ("approve", "Approve a submitted campaign (not by its submitter: four eyes)."),
                         ("reject", "Send a submitted campaign back (edit it, then submit again)."),
                         ("start", "Start an approved campaign (then `nextbest campaign run`)."),
                         ("pause", "Pause a running campaign (nothing more sends until `resume`)."),
                         ("resume", "Resume a paused campaign."),
                         ("stop", "Finish a campaign for good.")):
        campaign_app.command(command)(_transition(command, doc))

    @campaign_app.command("dry-run")
    def campaign_dry_run(campaign_id: str) -> None:
        """What the campaign would send now: counts by offer, channel and hour, and why users get nothing."""
        from nextbest.campaigns.execution import dry_run

        def body() -> dict:
            settings = Settings()
            return dry_run(settings, open_store(settings), campaign_id)

        _print(_guarded(body))

    @campaign_app.command("run")
    def campaign_run(
        campaign_id: Annotated[str | None, typer.Argument(help="one campaign (default: every running one, by "
                                                          "priority)")] = None,
        batch: Annotated[int, typer.Option(min=1, max=1000, help="users per decision batch")] = 500,
    ) -> None:
        """Execute running campaigns in batches through the decision engine (resumes where it stopped)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        from nextbest.campaigns.execution import execute, execute_due
        from nextbest.pipelines.console import console

        def body() -> list[dict]:
            settings = Settings()
            store = open_store(settings)
            with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as bar:
                tasks: dict[str, object] = {}

                def progress(cid: str, done: int, total: int) -> None:
                    if cid not in tasks:
                        tasks[cid] = bar.add_task(f"campaign {cid}", total=total)
                    bar.update(tasks[cid], completed=done, total=total)

                if campaign_id is not None:
                    return [execute(settings, store, campaign_id, batch=batch,
                                    progress=lambda done, total: progress(campaign_id, done, total))]
                return execute_due(settings, store, batch=batch, progress=progress)

        _print(_guarded(body))

    @campaign_app.command("experiment")
    def campaign_experiment(campaign_id: str) -> None:
        """Copy experiments: sends and metric per variant, the sample needed, and the winner once the rule says so."""
        from nextbest.campaigns.execution import evaluate_experiments

        def body() -> list[dict]:
            settings = Settings()
            return evaluate_experiments(settings, open_store(settings), campaign_id)[1]

        _print(_guarded(body))


def _write_spec(spec_file: Path, write) -> dict:
    """`campaign create` and `campaign edit`: read the file, check what it names, `write(store, spec)`, show it."""
    from nextbest.campaigns.api import describe

    settings = Settings()
    store = open_store(settings)
    spec = _read_spec(spec_file)
    _check_references(settings, store, spec)
    return describe(write(store, spec))


def _transition(command: str, doc: str):
    """The CLI command for one lifecycle command."""
    def transition(campaign_id: str, actor: Actor,
                   note: Annotated[str | None, typer.Option(help="why (kept in the history)")] = None) -> None:
        def body() -> dict:
            from nextbest.campaigns.api import describe

            return describe(open_store(Settings()).command(campaign_id, command, actor, note))

        _print(_guarded(body))

    transition.__doc__ = doc
    return transition


def _online_count(settings: Settings, rule: str, store) -> int:
    from nextbest.campaigns.segments import online_mask
    from nextbest.features.store import read_table
    from nextbest.serving.runtime import OnlineFeatures

    ids = read_table(settings, "profile")["user_id"].astype(str).drop_duplicates().tolist()
    features = OnlineFeatures(settings)
    total = 0
    for start in range(0, len(ids), 1000):
        users, known, _ = features.fetch(ids[start:start + 1000])
        total += int((online_mask(rule, users, store.segment_rule) & known).sum())
    return total


def _check_references(settings: Settings, store, spec) -> None:
    from nextbest.campaigns.api import check_references
    from nextbest.campaigns.execution import ExecutionError
    from nextbest.serving.config import ConfigError, load_config

    try:
        config = load_config(settings.operator_yaml)
    except ConfigError as err:
        raise ExecutionError(str(err)) from None
    check_references(spec, store, config)
