"""The report as one self-contained HTML page: inline CSS and inline SVG bar charts, no script, nothing fetched.

The same charts serve the dashboard (`chart`, `table`, `PAGE_CSS`), so the page a marketer opens and the file a
report run writes look the same.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from nextbest.monitoring.reports import STAGES, Report

__all__ = ["PAGE_CSS", "chart", "table", "report_charts", "report_html"]

PAGE_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:10px 20px} header a{color:#fff;margin-right:16px}
main{padding:12px 20px;max-width:1200px} h2{margin:22px 0 8px;font-size:17px}
.charts{display:flex;flex-wrap:wrap;gap:14px} .chart{background:#fff;border:1px solid #ddd}
table{border-collapse:collapse;background:#fff;margin:6px 0 14px;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#eef2f7}
td:first-child,th:first-child{text-align:left} .note{color:#666;font-size:12px}
.ok{color:#1b7f3b} .alert{color:#b00020;font-weight:bold} form{display:inline}
.msg{padding:8px 12px;margin:8px 0;border:1px solid #c8d6e5;background:#eef6ff}
.err{padding:8px 12px;margin:8px 0;border:1px solid #e0a0a0;background:#fff0f0}
"""


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.0f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def chart(title: str, labels: list[str], values: list[float], lows: list[float] | None = None,
          highs: list[float] | None = None, width: int = 380) -> str:
    """A horizontal bar chart (negative values to the left of zero), optional interval whiskers, as inline SVG."""
    vals = [0.0 if v is None or math.isnan(v) else float(v) for v in values]
    ends = vals + [x for x in (lows or []) + (highs or []) if x is not None and not math.isnan(x)]
    lo, hi = min([0.0, *ends]), max([0.0, *ends])
    span = (hi - lo) or 1.0
    left, plot, row = 110, width - 180, 22
    height = 30 + row * max(1, len(vals))

    def x(v: float) -> float:
        return left + (v - lo) / span * plot

    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" data-points="{len(vals)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>'
             f'<text x="8" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    shown = [_num(None if v is None or math.isnan(v) else float(v)) for v in values]  # no figure: "-", no bar
    for i, (label, v) in enumerate(zip(labels, vals, strict=True)):
        y = 26 + i * row
        x0, x1 = sorted((x(0.0), x(v)))
        color = "#b55" if v < 0 else "#4a7ab5"
        parts.append(f'<text x="8" y="{y + 14}" font-size="11">{html.escape(str(label))[:16]}</text>'
                     f'<rect class="bar" x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 0.5):.1f}" height="{row - 8}" '
                     f'fill="{color}"><title>{html.escape(str(label))}: {shown[i]}</title></rect>'
                     f'<text x="{left + plot + 8}" y="{y + 14}" font-size="11">{shown[i]}</text>')
        if lows and highs and not (math.isnan(lows[i]) or math.isnan(highs[i])):
            parts.append(f'<line class="ci" x1="{x(lows[i]):.1f}" x2="{x(highs[i]):.1f}" y1="{y + row / 2:.1f}" '
                         f'y2="{y + row / 2:.1f}" stroke="#222" stroke-width="1.5"/>')
    parts.append(f'<line x1="{x(0.0):.1f}" x2="{x(0.0):.1f}" y1="24" y2="{height - 2}" stroke="#999"/></svg>')
    return "".join(parts)


def table(df: pd.DataFrame, max_rows: int = 60) -> str:
    """A table of figures (values escaped), rounded for reading; the CSV keeps full precision."""
    if df.empty:
        return '<p class="note">no rows</p>'
    shown = df.head(max_rows).copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(_num)
        elif pd.api.types.is_datetime64_any_dtype(shown[col]):
            shown[col] = shown[col].dt.strftime("%Y-%m-%d")
    more = f'<p class="note">{len(df) - max_rows} more rows in the CSV</p>' if len(df) > max_rows else ""
    return shown.to_html(index=False, border=0, escape=True, na_rep="-") + more


def report_charts(report: Report) -> str:
    """The report's charts: funnel, incremental revenue per campaign (95 % intervals), ROI per channel, daily
    revenue and cost, sends by chosen hour."""
    t = report.tables
    fc = t["funnel_channel"]
    totals = [float(fc["sent"].sum())] + [float(fc[s].sum()) for s in STAGES]
    inc = t["incremental"][t["incremental"]["against"] == "control"]
    roi = t["channel_roi"]
    day = t["rollup"][t["rollup"]["grain"] == "day"]
    hours = t["send_time"].groupby("hour")["sent"].sum()
    days = day["period_start"].dt.strftime("%m-%d").tolist()
    return '<div class="charts">' + "".join([
        chart("Funnel (all sends)", ["sent", *STAGES], totals),
        chart("Incremental revenue vs control (95 % CI)", inc["campaign_id"].tolist(),
              inc["incremental_revenue"].tolist(), inc["incremental_revenue_low"].tolist(),
              inc["incremental_revenue_high"].tolist()),
        chart("ROI per channel", roi["channel"].tolist(), roi["roi"].tolist()),
        chart("Revenue per day", days, day["revenue"].tolist()),
        chart("Cost per day", days, day["cost"].tolist()),
        chart("Sends by chosen hour (UTC)", [f"{h:02d}:00" for h in hours.index], hours.tolist()),
    ]) + "</div>"


_TITLES = {"funnel_campaign": "Funnel per campaign", "funnel_offer": "Funnel per offer",
           "funnel_copy": "Funnel per campaign, offer and copy variant", "funnel_channel": "Funnel per channel",
           "incremental": "Incremental conversions and revenue against hold-outs (95 % intervals)",
           "channel_roi": "Cost and ROI per channel (against the campaign's hold-out baseline)",
           "send_time": "Send-time results by chosen hour (UTC)", "rollup": "Roll-ups"}


def report_html(report: Report) -> str:
    """The whole report page."""
    head = (f"<h1>nextbest report: {report.period} to {report.end:%Y-%m-%d %H:%M} UTC</h1>"
            f'<p class="note">sends from {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC, from the '
            "contact log and the decision service's logs; incremental figures compare treated decisions with hold-out "
            "decisions of the same campaign</p>")
    body = "".join(f"<h2>{_TITLES[name]}</h2>{table(df)}" for name, df in report.tables.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>nextbest report {report.period}'
            f"</title><style>{PAGE_CSS}</style></head><body><main>{head}{report_charts(report)}{body}</main>"
            "</body></html>")
