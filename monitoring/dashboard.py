"""The local web dashboard (`nextbest dashboard`): campaigns and their state (approve from the page, through the
campaign store's four-eyes rule, the same as `nextbest campaign approve`), copy-experiment results, the week's
funnel and ROI charts, model and data health. Plain server-rendered HTML with inline SVG: no script, no CDN.

Safety: binds 127.0.0.1 by default; beyond loopback it refuses to start without NEXTBEST_API_KEY and then asks
every request for it (header, or a cookie set by /login). Host allow-list against DNS rebinding; a form POST
from another origin is refused (a web page elsewhere cannot approve a campaign through the browser).
"""

from __future__ import annotations

import hmac
import html
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, quote

import pandas as pd
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from nextbest.monitoring.html import PAGE_CSS, chart, report_charts, table
from nextbest.monitoring.reports import PERIODS, build_report

__all__ = ["create_app", "address"]

KEY_COOKIE = "nextbest_dashboard_key"


def address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class _Frames:
    """The report frame, rebuilt only when a source file changed (pages stay fast on a large log)."""

    def __init__(self, settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._frame: pd.DataFrame | None = None
        self._reports: dict = {}

    def _stamp(self) -> tuple:
        s = self.settings
        # A campaign send is logged as a decision too, so the logs' times also cover the store's copy labels (the
        # store's own files change on every read transaction).
        paths = [Path(s.raw_dir) / "contacts.parquet", Path(s.log_dir) / "decisions.jsonl",
                 Path(s.log_dir) / "outcomes.jsonl"]
        return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)

    def get(self) -> pd.DataFrame:
        from nextbest.monitoring.sources import load_frame

        with self._lock:
            stamp = self._stamp()
            if self._frame is None or stamp != self._key:
                self._frame, self._key, self._reports = load_frame(self.settings), stamp, {}
            return self._frame

    def report(self, period: str):
        """The report of `period` ending at the data's last send, built once per version of the sources."""
        from nextbest.monitoring.sources import default_as_of

        frame = self.get()
        with self._lock:
            if period not in self._reports:
                self._reports[period] = build_report(frame, period, default_as_of(frame))
            return self._reports[period]


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    nav = "".join(f'<a href="{href}">{name}</a>' for href, name in
                  (("/", "Campaigns"), ("/report?period=week", "Report"), ("/health", "Model health")))
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>nextbest: '
                        f'{html.escape(title)}</title><link rel="icon" href="data:,"><style>{PAGE_CSS}</style></head>'
                        f"<body><header><b>nextbest</b> &nbsp; {nav}</header><main><h1>{html.escape(title)}</h1>"
                        f"{body}</main></body></html>", status_code=status)


def create_app(settings, warm: bool = False) -> Starlette:
    """The dashboard over the home in `settings` (campaign store, logs, reports, monitoring). With `warm`, the logs
    are read and each period's report built before the first request (seconds on a large log), not during it."""
    from nextbest.campaigns import lifecycle
    from nextbest.campaigns.store import CampaignStore, NotFound, store_path
    from nextbest.monitoring.monitor import monitor_dir
    from nextbest.monitoring.sources import service_health
    from nextbest.serving.guard import is_loopback

    store = CampaignStore(store_path(settings.home), four_eyes=settings.campaign_four_eyes)
    frames = _Frames(settings)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    need_key = key is not None and not is_loopback(settings.host)
    hosts = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()} | {settings.host.lower()}

    report = frames.report
    if warm:
        for period in PERIODS:
            report(period)

    async def campaigns(request: Request) -> Response:
        msg = request.query_params.get("msg")
        err = request.query_params.get("err")
        rows = []
        for c in sorted(store.list(), key=lambda c: c.updated_at, reverse=True):
            run = store.run_state(c.id) or {}
            action = ""
            if c.state == "submitted":
                action = (f'<form method="post" action="/campaigns/{quote(c.id)}/approve">'
                          f'<input name="actor" placeholder="your name" required size="10" aria-label="approver">'
                          f'<button type="submit" id="approve-{html.escape(c.id)}">Approve</button></form>')
            rows.append(f'<tr data-campaign="{html.escape(c.id)}"><td><a href="/campaigns/{quote(c.id)}">'
                        f"{html.escape(c.id)}</a></td><td>{html.escape(c.spec.name)}</td>"
                        f'<td class="state">{c.state}</td><td>{c.version}</td>'
                        f"<td>{html.escape(c.submitted_by or '-')}</td><td>{html.escape(c.approved_by or '-')}</td>"
                        f"<td>{run.get('sends', 0)}</td><td>{action}</td></tr>")
        body = (f'<p class="msg">{html.escape(msg)}</p>' if msg else "") + \
               (f'<p class="err">{html.escape(err)}</p>' if err else "")
        body += ("<h2>Campaigns</h2><table id=\"campaigns\"><tr><th>id</th><th>name</th><th>state</th><th>version</th>"
                 "<th>submitted by</th><th>approved by</th><th>sends</th><th></th></tr>" + "".join(rows) + "</table>"
                 if rows else "<h2>Campaigns</h2><p class=\"note\">no campaigns yet (`nextbest campaign create`)</p>")
        r = report("week")
        body += (f"<h2>This week ({r.start:%Y-%m-%d} to {r.end:%Y-%m-%d})</h2>{report_charts(r)}"
                 f"<h2>Incremental results against hold-outs</h2>{table(r.tables['incremental'])}")
        return _page("Campaigns", body)

    async def campaign(request: Request) -> Response:
        from nextbest.campaigns.execution import experiment_stats

        cid = request.path_params["cid"]
        try:
            c = store.get(cid)
        except NotFound as err:
            return _page("Not found", f'<p class="err">{html.escape(str(err))}</p>', 404)
        body = (f"<p>state <b>{c.state}</b>, version {c.version}, audience {html.escape(str(c.spec.audience))}, "
                f"trigger {html.escape(str(c.spec.trigger))}, control {c.spec.control_pct} %</p><h2>Copy experiments</h2>")
        stats = experiment_stats(settings, store, c)
        exp = []
        for offer in c.spec.offers:
            s = stats.get(offer.offer_id)
            if s is None or len(offer.variants) < 2 or not s.n.sum():
                continue
            for k, v in enumerate(offer.variants):
                n, hits = int(s.n[k]), int(s.successes[k])
                exp.append({"offer": offer.offer_id, "copy": v.id, "users": n, c.spec.experiment.metric: hits,
                            "rate": hits / n if n else float("nan"),
                            "winner": "yes" if c.winners.get(offer.offer_id) == v.id else ""})
        if exp:
            df = pd.DataFrame(exp)
            body += chart(f"{c.spec.experiment.metric} rate per copy", (df["offer"] + " " + df["copy"]).tolist(),
                          df["rate"].tolist()) + table(df)
        else:
            body += '<p class="note">no copy experiment in this campaign, or nothing sent yet</p>'
        body += "<h2>History</h2>" + table(pd.DataFrame(store.events(cid)))
        return _page(f"Campaign {cid}", body)

    async def approve(request: Request) -> Response:
        cid = request.path_params["cid"]
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        actor = (form.get("actor") or [""])[0].strip()
        try:
            store.command(cid, "approve", actor)
        except NotFound as err:
            return _page("Not found", f'<p class="err">{html.escape(str(err))}</p>', 404)
        except lifecycle.TransitionError as err:
            return RedirectResponse(f"/?err={quote(str(err))}", status_code=303)
        return RedirectResponse(f"/?msg={quote(f'campaign {cid} approved by {actor}')}", status_code=303)

    async def report_page(request: Request) -> Response:
        period = request.query_params.get("period", "week")
        if period not in PERIODS:
            return _page("Bad request", f'<p class="err">unknown period; use one of {", ".join(PERIODS)}</p>', 400)
        r = report(period)
        from nextbest.monitoring.html import _TITLES

        body = (f'<p class="note">{r.start:%Y-%m-%d %H:%M} to {r.end:%Y-%m-%d %H:%M} UTC; CSV and a file copy: '
                f"<code>nextbest report --period {period}</code></p>{report_charts(r)}" +
                "".join(f"<h2>{_TITLES[n]}</h2>{table(df)}" for n, df in r.tables.items()))
        return _page(f"Report: {period}", body)

    async def report_api(request: Request) -> Response:
        period = request.query_params.get("period", "week")
        if period not in PERIODS:
            return JSONResponse({"detail": f"unknown period {period!r}; use one of {', '.join(PERIODS)}"}, 400)
        return JSONResponse(report(period).as_json())

    async def health(request: Request) -> Response:
        path = monitor_dir(settings.home) / "latest.json"
        svc = service_health(settings)
        body = "<h2>Decision service</h2>" + table(pd.DataFrame([svc]))
        if not path.exists():
            body += '<p class="note">no monitoring run yet: <code>nextbest monitor</code></p>'
            return _page("Model health", body)
        doc = json.loads(path.read_text())
        found = doc["alerts"]
        body += (f'<h2>Alerts</h2><p class="{"alert" if found else "ok"}" id="alerts">{len(found)} open alert(s) '
                 f"(PSI above {doc['psi_threshold']}; checked {html.escape(doc['at'][:19])} UTC)</p>"
                 + (table(pd.DataFrame(found)) if found else ""))
        for model, cal in doc.get("calibration", {}).items():
            curve = pd.DataFrame(cal["reliability"])
            body += (f"<h2>Calibration: {html.escape(model)}</h2><p>ECE {cal['ece']:.4f} (alert above "
                     f"{doc['ece_threshold']}), Brier {cal['brier']:.4f}, over {cal['actions']} decided actions whose "
                     "conversion window has closed</p>"
                     + (chart(f"AUC against realised conversions per week of sending (alert below "
                              f"{doc.get('auc_threshold', '')})", [w["week"] for w in cal.get("auc_by_week", [])],
                              [w["auc"] for w in cal.get("auc_by_week", [])], width=520)
                        if cal.get("auc_by_week") else "")
                     + chart("observed conversion rate per predicted-probability bin",
                             [f"{p:.2f}" for p in curve["mean_predicted"]], curve["observed_rate"].tolist(), width=520)
                     + table(curve))
        for subject, rows in doc["drift"].items():
            if not rows:
                continue
            df = pd.DataFrame(rows).sort_values("psi", ascending=False)
            top = df.head(15)
            window = doc["windows"].get(subject)
            note = f" ({window['reference'][:10]} vs {window['current'][:10]})" if window else ""
            body += (f"<h2>Drift: {html.escape(subject)}{html.escape(note)}</h2>"
                     + chart(f"PSI, {subject} (top {len(top)})", top["feature"].tolist(), top["psi"].tolist(),
                             width=520) + table(df))
        return _page("Model health", body)

    async def metrics(request: Request) -> Response:
        path = monitor_dir(settings.home) / "metrics.prom"
        return PlainTextResponse(path.read_text() if path.exists() else "", media_type="text/plain; version=0.0.4")

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return _page("Sign in", '<form method="post" action="/login"><input type="password" name="key" '
                         'placeholder="API key" aria-label="API key"><button type="submit">Sign in</button></form>')
        given = (parse_qs((await request.body()).decode("utf-8", "replace")).get("key") or [""])[0]
        if key is None or not hmac.compare_digest(given.encode(), key.encode()):
            return _page("Sign in", '<p class="err">wrong API key</p>', 401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(KEY_COOKIE, given, httponly=True, samesite="strict")
        return resp

    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if "*" not in hosts and host not in hosts:
            return PlainTextResponse(f"Host {host!r} is not allowed; add it to NEXTBEST_ALLOWED_HOSTS", 421)
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and origin.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]") \
                not in hosts | {host}:
            return PlainTextResponse("a form from another site cannot change campaigns here", 403)
        if need_key and request.url.path not in ("/login", "/healthz"):
            given = request.headers.get("x-api-key") or request.cookies.get(KEY_COOKIE) or \
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not given or not hmac.compare_digest(given.encode(), key.encode()):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse("/login", status_code=303)
                return PlainTextResponse("API key required: send `X-API-Key: <key>` or sign in at /login", 401)
        return await call_next(request)

    app = Starlette(routes=[
        Route("/", campaigns), Route("/campaigns/{cid}", campaign), Route("/campaigns/{cid}/approve", approve,
                                                                         methods=["POST"]),
        Route("/report", report_page), Route("/api/report", report_api), Route("/health", health),
        Route("/metrics", metrics), Route("/login", login, methods=["GET", "POST"]),
        Route("/healthz", lambda request: PlainTextResponse("ok")),  # liveness, no data: open without the key
    ], middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)])

    return app
