"""The nextbest decision service (BentoML): decide, events, feedback, profile, reload, status, campaigns.

Every request first passes the guard (serving/guard.py: Host allow-list, API key, strict JSON, size
limit); each endpoint then validates its body with the pydantic models in serving/schemas.py and hands
it to serving/runtime.py; caller mistakes become 4xx answers with a message, never a 5xx.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from http import HTTPStatus

import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException, NotFound, ServiceUnavailable

from nextbest.campaigns.api import (
    CampaignApi,
    CampaignCommand,
    CampaignCreate,
    CampaignEdit,
    CampaignRef,
    CampaignRun,
    TriggerCampaigns,
)
from nextbest.features.settings import Settings
from nextbest.monitoring.api import ReportRequest, report_json
from nextbest.serving import shutdown
from nextbest.serving.guard import Guard, enforce_start
from nextbest.serving.ledger import LedgerUnavailable
from nextbest.serving.privacy import redacted
from nextbest.serving.runtime import ConflictError, NotFoundError, Runtime, UserError, default_loader
from nextbest.serving.schemas import (
    BatchDecideRequest,
    BatchDecision,
    DecideRequest,
    Decision,
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    Profile,
    ProfileRequest,
    ReloadResponse,
)

__all__ = ["NextBest", "MODEL_REFRESH_S"]

MODEL_REFRESH_S = 30.0  # how often the registry is asked for new champions


class _CallerMistakesAreNotErrors(logging.Filter):
    """BentoML logs a rejected request at ERROR with a traceback; make it one WARNING line.

    The line names the status and, for a schema error, the fields and error types, never the message
    or the input: those echo the caller's values (user ids, e-mail addresses).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            fields = ", ".join(f"{'.'.join(map(str, e['loc'])) or 'body'} ({e['type']})" for e in exc.errors()[:5])
            why = f"400 {exc.title}: {fields}"
        elif isinstance(exc, BentoMLException) and exc.error_code < 500:
            why = f"{int(exc.error_code)} {type(exc).__name__}"
        else:
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"{record.getMessage()}: rejected, {why}"
        record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _http(fn):
    """Map the runtime's caller errors onto HTTP 400/404/409, and a ledger that cannot store the request onto 503
    (e.g. an opt-out: the caller must retry, it was not acknowledged)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotFoundError as err:
            raise NotFound(str(err)) from None
        except ConflictError as err:
            raise BentoMLException(str(err), error_code=HTTPStatus.CONFLICT) from None
        except UserError as err:
            raise BadInput(str(err)) from None
        except LedgerUnavailable as err:
            raise ServiceUnavailable(f"not stored, retry later: {err}") from None
    return call


# Worker processes come from the settings (NEXTBEST_WORKERS): BentoML reads them when the class is defined.
@bentoml.service(http={"host": "127.0.0.1"}, traffic={"timeout": 30}, workers=max(1, Settings().workers), threads=4)
class NextBest:
    """Next-best-action decisions under the contact policy."""

    loader = staticmethod(default_loader)  # where champions come from; tests hand in their own

    def __init__(self) -> None:
        from nextbest.serving.metrics import metrics

        settings = Settings()
        enforce_start(settings)  # beyond loopback without an API key: refuse to serve
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_CallerMistakesAreNotErrors())
        shutdown.install(settings.shutdown_grace_s)  # SIGTERM: drain first, then the server stops
        # Each worker explores with its own stream: the same seed in every worker would repeat the same draws.
        rng = np.random.default_rng([settings.seed, bentoml.server_context.worker_index or 0])
        self.runtime = Runtime(settings, loader=self.loader, metrics=metrics(), rng=rng)
        self.runtime.metrics.models(self.runtime.models.current.versions())
        self.campaigns = _campaign_api(settings, self.runtime)
        gc.freeze()  # start-up objects (Feast, pandas, models) stay out of every later garbage collection
        self._stop = threading.Event()
        threading.Thread(target=self._refresh_models, name="model-refresh", daemon=True).start()

    def _refresh_models(self) -> None:
        while not self._stop.wait(MODEL_REFRESH_S):
            self.runtime.features.refresh()  # the Feast registry, only when its file changed
            self.runtime.metrics.models(self.runtime.models.refresh().versions())

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        self.runtime.close()  # after the drain: the ledger and the decision log are flushed and closed

    def __is_ready__(self) -> bool:
        return not shutdown.drain().draining and self.runtime.ready()[0]

    @bentoml.api(route="/decide")
    @_http
    def decide(self, request: DecideRequest, /) -> Decision:
        """Best action(s) for one user, or none; caps are charged unless dry_run."""
        return Decision(**self.runtime.decide(request))

    @bentoml.api(route="/decide_batch")
    @_http
    def decide_batch(self, request: BatchDecideRequest, /) -> BatchDecision:
        """Decisions for up to 1,000 users with one campaign context."""
        return BatchDecision(decisions=[Decision(**d) for d in self.runtime.decide_batch(request)])

    @bentoml.api(route="/events")
    @_http
    def events(self, request: EventsRequest, /) -> EventsResponse:
        """Behaviour events: pushed to the online store, then event triggers decide (within their campaigns' limits)."""
        out = self.runtime.events(request)
        return EventsResponse(**{**out, "triggered": self.runtime.trigger_campaigns.answer(out["triggered"])})

    @bentoml.api(route="/feedback")
    @_http
    def feedback(self, request: FeedbackRequest, /) -> FeedbackResponse:
        """An outcome of a decided action: logged; complaints and unsubscribes suppress the channel."""
        return FeedbackResponse(**self.runtime.feedback(request))

    @bentoml.api(route="/profile")
    @_http
    def profile(self, request: ProfileRequest, /) -> Profile:
        """A user's 360-degree view: features, tags, scores, contact counters, suppressions."""
        return Profile(**self.runtime.profile(request))

    @bentoml.api(route="/reload")
    def reload(self) -> ReloadResponse:
        """Re-read the operator config and ask the registry for new champions now."""
        config = self.runtime.config.reload()
        self.runtime.features.refresh()
        versions = self.runtime.models.refresh().versions()
        self.runtime.metrics.models(versions)
        return ReloadResponse(offers=len(config.offers), channels=len(config.channels),
                              error=redacted(self.runtime.config.error), model_versions=versions)

    @bentoml.api(route="/status")
    def status(self) -> dict:
        """Readiness and, when not ready, the reasons: ledger usable, models in force, last model or config error
        (no paths or SQL)."""
        return redacted(self.runtime.ready()[1])


    # --- campaigns (nextbest/campaigns): the same store and rules as `nextbest campaign ...` ---------------

    @bentoml.api(route="/campaigns/create")
    @_http
    def campaign_create(self, request: CampaignCreate, /) -> dict:
        """Create a draft campaign (audience segment or trigger, offers with copy variants, channels, limits)."""
        return self.campaigns.create(request)

    @bentoml.api(route="/campaigns/edit")
    @_http
    def campaign_edit(self, request: CampaignEdit, /) -> dict:
        """Change a campaign: a new version; an approved or running one goes back for approval."""
        return self.campaigns.edit(request)

    @bentoml.api(route="/campaigns/show")
    @_http
    def campaign_show(self, request: CampaignRef, /) -> dict:
        """A campaign with its state, approvals, history and run progress."""
        return self.campaigns.show(request)

    @bentoml.api(route="/campaigns/command")
    @_http
    def campaign_command(self, request: CampaignCommand, /) -> dict:
        """submit, approve (not by the submitter), reject, start, pause, resume or stop a campaign."""
        return self.campaigns.command(request)

    @bentoml.api(route="/campaigns/dry_run")
    @_http
    def campaign_dry_run(self, request: CampaignRef, /) -> dict:
        """What the campaign would send now, by offer, channel and hour, and why users get nothing."""
        return self.campaigns.dry_run(request)

    @bentoml.api(route="/campaigns/run")
    @_http
    def campaign_run(self, request: CampaignRun, /) -> dict:
        """Execute a running campaign for up to `max_batches` batches through this service's engine (resumable)."""
        return self.campaigns.run(request)

    @bentoml.api(route="/campaigns/experiment")
    @_http
    def campaign_experiment(self, request: CampaignRef, /) -> list[dict]:
        """Copy experiments: sends and metric per variant, the sample needed, and the winner once the rule says so."""
        return self.campaigns.experiment(request)

    # --- reports (nextbest/monitoring): the same figures as `nextbest report` ---------------------------------------

    @bentoml.api(route="/report")
    @_http
    def report(self, request: ReportRequest, /) -> dict:
        """Campaign report from the logs: funnels per campaign, offer, copy and channel; incremental conversions and
        revenue against hold-outs with 95 % intervals; cost and ROI; send times; daily/weekly/monthly roll-ups."""
        return report_json(self.runtime.settings, request)


def _campaign_api(settings: Settings, runtime: Runtime) -> CampaignApi:
    """The campaign endpoints over the home's campaign store; the event triggers campaigns name belong to them, and
    every decision that names a campaign holds out that campaign's control group."""
    from nextbest.campaigns.execution import hold_out_campaigns
    from nextbest.campaigns.store import CampaignStore, store_path

    store = CampaignStore(store_path(settings.home), four_eyes=settings.campaign_four_eyes)
    runtime.trigger_campaigns = TriggerCampaigns(store, runtime)
    hold_out_campaigns(runtime, store)
    return CampaignApi(store, runtime, (NotFoundError, ConflictError, UserError))


# While draining (SIGTERM), requests get 503 and readiness is false; see serving/shutdown.py.
NextBest.add_asgi_middleware(shutdown.DrainMiddleware)
NextBest.add_asgi_middleware(Guard)  # inside the drain: a refused request never reaches BentoML's parsers
