"""Running an audience campaign: batches through the decision engine of `/decide`, resumable, within budget.

Each batch is one `Runtime.decide_batch` (the same planner, contact rules and ledger as `/decide`), so caps,
channel capacity, quiet hours, consent and suppressions hold across campaigns; the batch's idempotency key
(campaign, version, position) makes a batch replayed after a crash charge nothing twice. The campaign's time
limits become the context's `not_before`/`deadline`, its local send hours the context's `send_hours`, and its
copy variants with their allocation probabilities the context's `variants`: the engine draws each action's copy
and logs it with its probability in decisions.jsonl. After each batch the contacts (with the copy variant and
that probability) and the cursor are stored in one transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from nextbest.campaigns import experiments, lifecycle, segments
from nextbest.campaigns.model import Campaign
from nextbest.campaigns.store import CampaignStore
from nextbest.serving import holdout as holdout_rule

__all__ = ["ExecutionError", "audience", "control_mask", "CampaignHoldouts", "hold_out_campaigns",
           "variant_probabilities", "experiment_stats", "evaluate_experiments", "dry_run", "execute", "execute_due",
           "trigger_contexts"]

MAX_BATCH = 1000  # the decision service's batch limit
log = logging.getLogger(__name__)


class ExecutionError(ValueError):
    """A campaign that cannot run as asked; the message says why and what to do."""


def audience(settings, store: CampaignStore, campaign: Campaign, as_of: datetime | None = None) -> list[str]:
    """The campaign's audience: its segment's members on the offline feature tables, sorted."""
    if campaign.spec.audience is None:
        raise ExecutionError(f"campaign {campaign.id} is a trigger campaign ({campaign.spec.trigger}): it sends from "
                             "the events endpoint, not in batches")
    rule = store.segment(campaign.spec.audience).rule
    return segments.member_ids(settings.feature_dir, rule, store.segment_rule, as_of)


def control_mask(campaign: Campaign, user_ids: list[str], holdout, now: datetime) -> np.ndarray:
    """Users held out of this campaign, never contacted by it: the universal hold-out and the campaign's own control
    group (`control_pct`, or the operator config's share for this campaign when larger), by the one stable per-user
    rule of serving/holdout.py: the one the service applies to every decision that names the campaign (a batch's
    or a trigger's), through `CampaignHoldouts`."""
    merged = holdout_rule.with_campaign_shares(holdout, {campaign.id: campaign.spec.control_pct / 100.0})
    return np.array([holdout_rule.control_of(u, campaign.id, merged, now) is not None for u in user_ids], dtype=bool)


class CampaignHoldouts:
    """The runtime's operator config source, with every stored campaign's own control share added to the config's
    hold-outs (`holdout.with_campaign_shares`): a decision that names a campaign, a batch's or a trigger's, holds out
    that campaign's control group by the one rule and logs it as a control decision (`holdout`: `campaign:<id>`).
    The merged config is made again only when the config or a campaign's share changed."""

    def __init__(self, source, store: CampaignStore):
        self.source, self.store = source, store
        self._last: tuple = (None, None, None)  # (operator config, shares, merged config)

    def current(self, now_s: float):
        base = self.source.current(now_s)
        last_base, last_shares, merged = self._last
        try:
            shares = self.store.control_shares()
        except sqlite3.Error as err:
            # Decisions go on with the shares last read: a control group is a measurement, not a contact rule.
            log.error("campaign store unreadable, control shares as last read: %s", err)
            shares = last_shares or {}
        if base is not last_base or shares is not last_shares:
            holdout = holdout_rule.with_campaign_shares(base.holdout, shares)
            merged = base if holdout is base.holdout else base.model_copy(update={"holdout": holdout})
            self._last = (base, shares, merged)
        return merged

    def __getattr__(self, name: str):  # reload, error, missing, path: the operator config source's own
        return getattr(self.source, name)


def hold_out_campaigns(runtime, store: CampaignStore) -> None:
    """Make the runtime's decisions hold out each campaign's control group (`CampaignHoldouts`); once per runtime."""
    if not isinstance(runtime.config, CampaignHoldouts):
        runtime.config = CampaignHoldouts(runtime.config, store)


def experiment_stats(settings, store: CampaignStore, campaign: Campaign,
                     sent_by: datetime | None = None) -> dict[str, experiments.ArmStats]:
    """Per offer with copy variants: users per variant and users with the campaign's metric, from the campaign's
    sends (those sent by `sent_by`, when given) joined to the outcome log (decision_id, offer_id)."""
    metric = campaign.spec.experiment.metric
    sends = store.sends(campaign.id)
    if sent_by is not None:
        sends = [s for s in sends if datetime.fromisoformat(s["send_at"]) <= sent_by]
    reached: set[tuple[str, str]] = set()
    path = Path(settings.log_dir) / "outcomes.jsonl"
    if path.exists() and sends:
        ours = {s["decision_id"] for s in sends}
        with path.open() as f:
            for line in f:
                r = json.loads(line)
                if r.get("outcome") == metric and r.get("decision_id") in ours:
                    reached.add((r["decision_id"], r["offer_id"]))
    out = {}
    for offer in campaign.spec.offers:
        ids = [v.id for v in offer.variants]
        n, s = np.zeros(len(ids)), np.zeros(len(ids))
        for send in sends:
            if send["offer_id"] == offer.offer_id and send["variant"] in ids:
                k = ids.index(send["variant"])
                n[k] += 1
                s[k] += (send["decision_id"], offer.offer_id) in reached
        out[offer.offer_id] = experiments.ArmStats(n, s)
    return out


def required_per_arm(campaign: Campaign, offer_id: str) -> int:
    e = campaign.spec.experiment
    k = len(next(o for o in campaign.spec.offers if o.offer_id == offer_id).variants)
    return experiments.required_per_arm(e.mde, e.baseline, e.alpha, e.power, k)


def evaluate_experiments(settings, store: CampaignStore, campaign_id: str,
                         now: datetime | None = None) -> tuple[Campaign, list[dict]]:
    """Apply the sequential rule to every undecided copy experiment and record winners (the rollout).

    A winner needs the evidence of the outcomes reported so far (a send without one yet counts as a miss, which
    only delays a winner). "No copy better at the announced sample" instead counts only sends whose outcome had
    time to arrive (`outcome_hours` before now): missing reports must not read as equal copies."""
    from nextbest.serving import clock

    campaign = store.get(campaign_id)
    e = campaign.spec.experiment
    now = now or clock.system_clock()
    matured = experiment_stats(settings, store, campaign, sent_by=now - timedelta(hours=e.outcome_hours))
    report = []
    for offer_id, stats in experiment_stats(settings, store, campaign).items():
        variants = [v.id for v in next(o for o in campaign.spec.offers if o.offer_id == offer_id).variants]
        if len(variants) < 2:
            continue
        v = experiments.verdict(stats, e.mde, e.baseline, e.alpha)
        need = required_per_arm(campaign, offer_id)
        row = dict(offer_id=offer_id, variants=variants, n=stats.n.astype(int).tolist(),
                   successes=stats.successes.astype(int).tolist(), rates=v.rates.round(5).tolist(),
                   required_per_arm=need, winner=campaign.winners.get(offer_id))
        if row["winner"] is None and v.winner is not None:
            note = f"{e.metric} rate {v.rates[v.winner]:.4f}, beats every other copy (anytime-valid, alpha {e.alpha})"
            campaign = store.record_winner(campaign.id, offer_id, variants[v.winner], note)
            row["winner"] = variants[v.winner]
        elif row["winner"] is None and e.mode == "fixed" and (matured[offer_id].n >= need).all():
            campaign = store.record_winner(campaign.id, offer_id, variants[0],
                                           f"no copy better by the MDE at {need} users per copy: the first continues")
            row["winner"] = variants[0]
        report.append(row)
    return campaign, report


def variant_probabilities(campaign: Campaign, offer_id: str, stats: experiments.ArmStats | None,
                          rng: np.random.Generator) -> np.ndarray:
    """Allocation probabilities over the offer's variants for the next batch."""
    variants = [v.id for v in next(o for o in campaign.spec.offers if o.offer_id == offer_id).variants]
    k = len(variants)
    if offer_id in campaign.winners:
        return np.eye(k)[variants.index(campaign.winners[offer_id])]
    if k == 1 or campaign.spec.experiment.mode == "fixed" or stats is None:
        return np.full(k, 1.0 / k)
    return experiments.thompson_probabilities(stats, campaign.spec.experiment.floor, rng)


def _test_users(campaign: Campaign, n_audience: int) -> int | None:
    """Fixed mode with an undecided experiment: how many audience users form the test (the rest wait for the
    winner); None when nothing waits."""
    undecided = [o for o in campaign.spec.offers if len(o.variants) > 1 and o.offer_id not in campaign.winners]
    if campaign.spec.experiment.mode != "fixed" or not undecided:
        return None
    return int(np.ceil(n_audience * campaign.spec.experiment.test_share))


def _context(campaign: Campaign, now: datetime, shares: dict[str, np.ndarray] | None = None):
    """The decision context of a batch: the campaign's offers, channels, times, local send hours and, per offer, its
    copy variants with the probabilities the engine draws them with (and logs with each action)."""
    from nextbest.serving.schemas import CampaignContext

    spec = campaign.spec
    not_before = max(now, spec.start) if spec.start else None
    deadline = now + timedelta(hours=spec.send_window_hours)
    deadline = min(deadline, spec.end) if spec.end else deadline
    variants = None if shares is None else {
        o.offer_id: {v.id: float(p) for v, p in zip(o.variants, shares[o.offer_id], strict=True)} for o in spec.offers}
    return CampaignContext(campaign_id=campaign.id, offers=[o.offer_id for o in spec.offers], channels=spec.channels,
                           not_before=not_before if not_before and not_before > now else None, deadline=deadline,
                           send_hours=spec.send_hours, variants=variants)


def dry_run(settings, store: CampaignStore, campaign_id: str, runtime=None, now: datetime | None = None,
            chunk: int = MAX_BATCH) -> dict:
    """What the campaign would send now (any state; charges and logs nothing): counts by offer, channel and
    local send hour, and why users get nothing."""
    from nextbest.serving.runtime import Runtime

    campaign = store.get(campaign_id)
    rt = runtime or Runtime(settings)
    now = (now or rt.clock()).astimezone(UTC)
    ids = audience(settings, store, campaign)
    held = control_mask(campaign, ids, rt.config.current(time.monotonic()).holdout, now)
    todo = [u for u, h in zip(ids, held, strict=True) if not h]
    rng = np.random.default_rng([settings.seed, campaign.version])
    ctx = _context(campaign, now, {o.offer_id: variant_probabilities(campaign, o.offer_id, None, rng)
                                   for o in campaign.spec.offers})
    by_offer, by_channel, by_hour, reasons = Counter(), Counter(), Counter(), Counter()
    by_variant = Counter()
    decided = with_action = 0
    cost = 0.0
    costs = {c.channel: c.cost for c in rt.config.current(time.monotonic()).channels}
    for decisions in rt.score_chunks(todo, ctx, now, chunk=chunk):
        for d in decisions:
            decided += 1
            for a in d["actions"]:
                by_offer[a["offer_id"]] += 1
                by_variant[f"{a['offer_id']}/{a['variant']}"] += 1
                by_channel[a["channel"]] += 1
                by_hour[datetime.fromisoformat(a["send_at"]).hour] += 1
                cost += costs.get(a["channel"], 0.0)
            with_action += bool(d["actions"])
            if not d["actions"]:
                reasons.update({r["reason"] for r in d["filtered"]} or {"no_positive_value"})
    return dict(campaign_id=campaign.id, version=campaign.version, state=campaign.state, audience=len(ids),
                held_out=int(held.sum()), not_online=len(todo) - decided, would_send=with_action,
                no_contact=decided - with_action, cost=round(cost, 2), by_offer=dict(by_offer.most_common()),
                by_channel=dict(by_channel.most_common()), by_hour=dict(sorted(by_hour.items())),
                by_variant=dict(sorted(by_variant.items())),
                filtered=dict(reasons.most_common()))


def execute(settings, store: CampaignStore, campaign_id: str, runtime=None, batch: int = 500,
            max_batches: int | None = None, progress: Callable[[int, int], None] | None = None,
            rng: np.random.Generator | None = None) -> dict:
    """Run (or resume) a running audience campaign until its audience, budget, send limit or time is used up, its
    fixed experiment waits for a winner, or `max_batches`. Returns the run's state and why it stopped."""
    from nextbest.serving.runtime import Runtime
    from nextbest.serving.schemas import BatchDecideRequest, FeedbackRequest

    if not 1 <= batch <= MAX_BATCH:
        raise ExecutionError(f"batch must be 1..{MAX_BATCH} users, got {batch}")
    campaign = store.get(campaign_id)
    if not lifecycle.may_send(campaign):
        raise ExecutionError(f"campaign {campaign.id} is {campaign.state}: nothing sends before it is approved and "
                             "started (`nextbest campaign approve`, then `start`)")
    rt = runtime or Runtime(settings)
    hold_out_campaigns(rt, store)
    state = store.run_state(campaign.id)
    if state is None or state["version"] != campaign.version:  # a new approval is a new run over a fresh audience
        # In a seeded random order: a fixed test's users (the first test_share) are then a random sample of it.
        members = audience(settings, store, campaign)
        order = np.random.default_rng([settings.seed, campaign.version, zlib.crc32(campaign.id.encode())])
        state = store.start_run(campaign.id, campaign.version, [members[i] for i in order.permutation(len(members))])
    rng = rng or np.random.default_rng([settings.seed, campaign.version, state["cursor"]])  # a resume draws anew
    ids: list[str] = state["audience"]
    costs = {c.channel: c.cost for c in rt.config.current(time.monotonic()).channels}
    allowed = campaign.spec.channels or list(costs)
    max_cost = max((costs.get(c, 0.0) for c in allowed), default=0.0)
    caps = campaign.spec.caps
    cursor, sends, cost = state["cursor"], state["sends"], state["cost"]
    stopped, batches = "audience done", 0
    while cursor < len(ids):
        now = rt.clock().astimezone(UTC)
        campaign, _ = evaluate_experiments(settings, store, campaign.id, now)
        if not lifecycle.may_send(campaign):
            stopped = f"campaign is {campaign.state}"
            break
        if campaign.spec.end and now >= campaign.spec.end:
            stopped = "past the campaign's end"
            break
        if campaign.spec.start and now < campaign.spec.start - timedelta(hours=campaign.spec.send_window_hours):
            stopped = "before the campaign's start"
            break
        test = _test_users(campaign, len(ids))
        size = min(batch, len(ids) - cursor, (test - cursor) if test is not None and cursor < test else batch)
        if test is not None and cursor >= test:
            stopped = "waiting for the copy experiment's winner"
            break
        # Never overspend: a batch sends at most one action per user, each at most the dearest allowed channel.
        if caps.max_sends is not None:
            size = min(size, caps.max_sends - sends)
        if caps.budget is not None and max_cost > 0:
            size = min(size, int((caps.budget - cost) // max_cost))
        if size <= 0:
            stopped = "budget or send limit reached"
            break
        if max_batches is not None and batches >= max_batches:
            stopped = "batch limit of this run"
            break
        chunk = ids[cursor:cursor + size]
        known = rt.features.fetch(chunk)[1]
        todo = [u for u, k in zip(chunk, known, strict=True) if k]  # not online (yet): skipped, counted as such
        rows, held = [], 0
        if todo:
            stats = experiment_stats(settings, store, campaign) if campaign.spec.experiment.mode == "bandit" else {}
            shares = {o.offer_id: variant_probabilities(campaign, o.offer_id, stats.get(o.offer_id), rng)
                      for o in campaign.spec.offers}
            # The engine draws each action's copy with these probabilities and logs both with the decision.
            decisions = rt.decide_batch(BatchDecideRequest(
                user_ids=todo, context=_context(campaign, now, shares),
                idempotency_key=f"{campaign.id}:v{campaign.version}:{cursor}"))
            rows = [(d["decision_id"], d["user_id"], a["offer_id"], a["channel"], a["variant"], a["variant_probability"],
                     a["send_at"], costs.get(a["channel"], 0.0)) for d in decisions for a in d["actions"]]
            # Its control group and the universal hold-out come back as logged control decisions, without an action.
            held = sum(d["holdout"] is not None for d in decisions)
        cursor += len(chunk)
        try:
            sends, cost = store.advance(campaign.id, campaign.version, cursor, rows, held)
        except lifecycle.TransitionError:
            # Paused, stopped or edited while this batch was decided: give its charges back and send none of it. The
            # cursor moves past it, since its idempotency key would replay these (released) decisions on a resume.
            for r in rows:
                rt.feedback(FeedbackRequest(decision_id=r[0], outcome="not_sent", offer_id=r[2], channel=r[3]))
            store.skip(campaign.id, campaign.version, cursor)
            stopped = f"campaign changed during the batch: its {len(rows)} decisions given back, its users skipped"
            break
        batches += 1
        if progress:
            progress(cursor, len(ids))
    if cursor >= len(ids) and lifecycle.may_send(store.get(campaign.id)):
        store.command(campaign.id, "finish", "executor", note="audience done")
    final = store.run_state(campaign.id)
    return dict(campaign_id=campaign.id, version=campaign.version, audience=len(ids), done=final["cursor"],
                sends=final["sends"], cost=round(final["cost"], 2), held_out=final["held_out"], stopped=stopped,
                state=store.get(campaign.id).state)


def trigger_contexts(store: CampaignStore, now: datetime, costs: dict[str, float] | None = None) -> dict:
    """Per event trigger some campaign names: the decision context of the highest-priority campaign that may send
    now (running on its approved version, within its start and end, with room left under its `max_sends` and, at
    its cheapest allowed channel of `costs`, its `budget`), or None while none may (nothing sends). The exact limit
    is kept when the decided contacts are recorded (`CampaignStore.record_triggered`)."""
    out: dict = {}
    for c in sorted(store.trigger_campaigns(), key=lambda c: (-c.spec.priority, c.id)):
        live = lifecycle.may_send(c) and (c.spec.start is None or c.spec.start <= now) and \
            (c.spec.end is None or now < c.spec.end) and out.get(c.spec.trigger) is None and _room_left(store, c, costs)
        if live:
            # A trigger campaign's copies share its events evenly (or all go to a recorded winner).
            shares = {o.offer_id: variant_probabilities(c, o.offer_id, None, np.random.default_rng(0))
                      for o in c.spec.offers}
            out[c.spec.trigger] = _context(c, now, shares)
        else:
            out.setdefault(c.spec.trigger, None)
    return out


def _room_left(store: CampaignStore, campaign: Campaign, costs: dict[str, float] | None) -> bool:
    """Whether one more contact may fit the campaign's send limit and budget."""
    caps = campaign.spec.caps
    if caps.max_sends is None and caps.budget is None:
        return True
    n, spent = store.totals(campaign.id)
    allowed = [c for c in (campaign.spec.channels or list(costs or {})) if c in (costs or {})]
    cheapest = min((costs[c] for c in allowed), default=0.0)
    return (caps.max_sends is None or n < caps.max_sends) and (caps.budget is None or spent + cheapest <= caps.budget)


def execute_due(settings, store: CampaignStore, runtime=None, batch: int = 500,
                progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Run every running audience campaign, highest priority first (it gets the users' caps first)."""
    from nextbest.serving.runtime import Runtime

    rt = runtime or Runtime(settings)
    due = sorted((c for c in store.list() if lifecycle.may_send(c) and c.spec.audience is not None),
                 key=lambda c: (-c.spec.priority, c.id))
    return [execute(settings, store, c.id, rt, batch,
                    progress=(lambda done, total, cid=c.id: progress(cid, done, total)) if progress else None)
            for c in due]
