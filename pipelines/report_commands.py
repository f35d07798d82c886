"""`nextbest report`, `nextbest monitor` and `nextbest dashboard`: campaign reports, model and data health, the
local web dashboard (monitoring/ does the work; this wires settings, disk and the console)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from nextbest.features.settings import Settings
from nextbest.pipelines.console import console

__all__ = ["register", "write_report", "parse_as_of"]


def parse_as_of(text: str | None) -> pd.Timestamp | None:
    """`--as-of` as a UTC time; a mistake is a clear exit 2."""
    if text is None:
        return None
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        typer.echo(f"nextbest report: --as-of {text!r} is not a date or time; use ISO-8601, e.g. 2026-11-30 or "
                   "2026-11-30T12:00Z", err=True)
        raise typer.Exit(2) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def write_report(settings: Settings, period: str, as_of: pd.Timestamp | None, output: Path | None) -> Path:
    """Build the report of `period` ending at `as_of` (default: the end of the data) and write report.html and one
    CSV per table into a fresh folder, swapped in whole (a failed run leaves the last good report)."""
    from nextbest.monitoring.html import report_html
    from nextbest.monitoring.reports import build_report
    from nextbest.monitoring.sources import default_as_of, load_frame

    frame = load_frame(settings)
    if frame.empty:
        raise FileNotFoundError(f"no contacts to report on in {settings.home}: ingest a contacts table (`nextbest "
                                "ingest`), simulate a world (`nextbest simulate`), or let the service log decisions")
    as_of = as_of or default_as_of(frame)
    report = build_report(frame, period, as_of)
    out = Path(output or settings.home / "reports") / f"{period}-{as_of:%Y-%m-%d}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        (tmp / "report.html").write_text(report_html(report))
        for name, df in report.tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        period: Annotated[str, typer.Option(help="day, week or month (30 days) ending at --as-of")] = "week",
        as_of: Annotated[str | None, typer.Option(help="end of the period, ISO-8601 UTC (default: the last send)")] = None,
        output: Annotated[Path | None, typer.Option(help="folder for the report (default <home>/reports)")] = None,
    ) -> None:
        """Campaign report from the logs: funnels, incremental results vs hold-outs, ROI, send times (HTML + CSV)."""
        from nextbest.monitoring.reports import PERIODS

        if period not in PERIODS:
            typer.echo(f"nextbest report: --period {period!r} is not a period; use one of {', '.join(PERIODS)}",
                       err=True)
            raise typer.Exit(2)
        try:
            out = write_report(Settings(), period, parse_as_of(as_of), output)
        except FileNotFoundError as err:
            typer.echo(f"nextbest report: {err}", err=True)
            raise typer.Exit(2) from None
        console.print(f"report written: {out / 'report.html'} (and one CSV per table)")

    @app.command()
    def monitor() -> None:
        """Feature and score drift (PSI) against the thresholds in Settings; writes <home>/monitoring/ (alerts, metrics)."""
        from nextbest.monitoring.monitor import monitor_dir, run_monitor

        settings = Settings()
        result = run_monitor(settings)
        checked = sum(len(v) for v in result["drift"].values())
        for a in result["alerts"]:
            console.print(f"[bold red]alert:[/] {a['subject']} {a['name']}: {a['metric']} {a['value']:.3f} "
                          f"above {a['threshold']}")
        console.print(f"{checked} features and scores checked, {len(result['alerts'])} alert(s); "
                      f"{monitor_dir(settings.home) / 'latest.json'}")

    @app.command()
    def dashboard(
        host: Annotated[str | None, typer.Option(help="bind address (default NEXTBEST_HOST, 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option(help="port (default NEXTBEST_DASHBOARD_PORT, 8050)")] = None,
    ) -> None:
        """The local web dashboard: campaigns (approve from the page), experiments, funnel and ROI, model health."""
        import uvicorn

        from nextbest.monitoring.dashboard import address, create_app
        from nextbest.pipelines.serve_commands import port_problem
        from nextbest.serving.guard import UnsafeStart, check_start

        base = Settings()
        settings = base.model_copy(update={"host": host or base.host})
        try:
            check_start(settings, settings.host)
        except UnsafeStart as err:
            typer.echo(f"nextbest dashboard: {err}", err=True)
            raise typer.Exit(2) from None
        port = port or settings.dashboard_port
        problem = port_problem(settings.host, port)
        if problem:
            typer.echo(f"nextbest dashboard: {problem.replace('NEXTBEST_PORT', 'NEXTBEST_DASHBOARD_PORT')}", err=True)
            raise typer.Exit(2)
        app = create_app(settings, warm=True)  # the logs are read now: the first page is as fast as the others
        typer.echo(f"nextbest dashboard on {address(settings.host, port)}")
        uvicorn.run(app, host=settings.host, port=port, log_level="warning")
