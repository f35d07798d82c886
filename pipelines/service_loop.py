"""The closed loop through the running decision service: the simulated world talks to it over HTTP only.

Each round, for `days` simulated days: the world's users act (their events go to `/events` and into the company's
event export, the raw events table); every morning the campaign asks `/decide_batch` for its users; the world
answers the sends the service decided (outcomes drawn from the simulator's truth) through `/feedback`, as a
company's campaign system would, each outcome once it has happened (later ones wait in `<home>/service_loop/`).
Between rounds `retrain` learns from the service's own logs (pipelines/logs_to_contacts.py folds the decision
and outcome logs into the contacts table), promotes through its gates, and `/reload` makes the service
hot-swap the new champions. Nothing but the service writes a contact: the raw contacts table changes only by
that fold.

The service holds the hold-outs (operator config `holdout`): a held-out user's decision is a logged "no contact"
with its probability, and the uplift model retrains from those control rows. The loop's measure of a round is the
truth's expected incremental revenue of what the service sent (simulation/replay.py), next to the oracle's over
the same days and users (the same hold-outs kept out, the operator config's caps), with unsubscribes and complaints
per 1,000 contacts. That value moves with the world: rounds shorter than a week spend one weekly contact budget
(per user, per channel, per offer), so a later round has less to send and its value falls with the oracle's. What
the loop has learnt shows on the fixed yardstick: each round's champions on the first round's users, days and
features, without exploration; it holds while the champions do and moves only when retraining promotes.

The service must believe simulated times: serve it with `NEXTBEST_MAX_AGE_S`, `NEXTBEST_CLOCK_SKEW_S` and
`NEXTBEST_MAX_OUTCOME_AGE_S` wide enough to cover the simulated calendar (`SIMULATED_CLOCK_ENV`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.contract import TABLES
from nextbest.features.ingest import read_raw, write_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.logs_to_contacts import OUTCOME_COLUMNS, PREFIX
from nextbest.serving.config import load_config
from nextbest.simulation.behaviour import concat_events, organic_events, purchase_carts
from nextbest.simulation.campaigns import Purchases
from nextbest.simulation.catalog import CHANNELS, EVENT_TYPES, product_prices
from nextbest.simulation.clock import DAY_NS
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import Choice, Period, ReplayConfig, Rules, Situation, keep_capacity, replay
from nextbest.simulation.response import HORIZON_DAYS
from nextbest.simulation.truth import Truth
from nextbest.simulation.world import events_table

__all__ = ["ServiceLoopConfig", "SIMULATED_CLOCK_ENV", "ServiceError", "ServicePolicy", "run_service_loop", "judged_period",
           "simulated_clock", "demo_round"]

_TEN_YEARS_S = str(10 * 365 * 86_400)
# What a service driven through simulated days needs: caller times anywhere in the simulated calendar are believed.
SIMULATED_CLOCK_ENV = {"NEXTBEST_MAX_AGE_S": _TEN_YEARS_S, "NEXTBEST_CLOCK_SKEW_S": _TEN_YEARS_S,
                       "NEXTBEST_MAX_OUTCOME_AGE_S": _TEN_YEARS_S}
_CAMPAIGN_HOUR = pd.Timedelta(hours=6)  # the campaign asks for its decisions each morning, 06:00 UTC
_REPORTED = ("opened", "clicked", "converted", "unsubscribed", "complained")  # what the campaign system reports back


def simulated_clock(settings: Settings) -> Settings:
    """`settings` for a decision service the loop starts itself: bound to 127.0.0.1, believing caller times anywhere
    in the simulated calendar (SIMULATED_CLOCK_ENV)."""
    return settings.model_copy(update={"host": "127.0.0.1", **{k.removeprefix("NEXTBEST_").lower(): int(v)
                                                                for k, v in SIMULATED_CLOCK_ENV.items()}})


class ServiceError(RuntimeError):
    """The service refused a request the loop made (status and its message)."""


@dataclass(frozen=True)
class ServiceLoopConfig:
    rounds: int = 2
    days: int = 3  # simulated days per round
    users: int | None = None  # users the campaign addresses (a seeded sample; None = all)
    campaign_id: str = "loop"
    models: tuple[str, ...] = ("conversion", "uplift", "send_time", "churn")  # retrained between rounds
    uplift_learner: str = "auto"  # uplift learner at each retraining: auto (cross-fitted choice) or t, x, dr, funnel
    trials: int = 1  # Optuna trials per model at each retraining
    policy_gate: bool = False  # promote by the policy's simulated value (slow) rather than each model's holdout
    seed: int = 11
    batch: int = 1000  # users per /decide_batch and events per /events request (the service's limit)


def _post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise ServiceError(f"POST {path} -> {response.status_code}: {response.text[:300]}")
    return response.json()


class ServicePolicy:
    """A replay policy whose choices are the service's answers to /decide_batch (one decision per user and day)."""

    name = "nba (service)"

    def __init__(self, client, period: Period, campaign_id: str, batch: int):
        self.client, self.period, self.campaign_id, self.batch = client, period, campaign_id, batch
        self.offer_of = {o: i for i, o in enumerate(period.offers["offer_id"].astype(str))}
        self.channel_of = {c: i for i, c in enumerate(CHANNELS)}
        self.decided: dict[tuple[int, int], str] = {}  # (day, user row) -> decision id of the send
        self.controls = 0  # hold-out decisions the service logged
        self.held_out: set[int] = set()  # user rows the service held out (stable per user for the campaign)
        self.decisions = 0
        self.outcomes: pd.DataFrame | None = None  # drawn, not reported yet
        self.recorded = 0  # feedback the service recorded

    def observe(self, sends: pd.DataFrame) -> None:
        """A day's sends with their drawn outcomes: reported once each has happened."""
        if "opened_at" in sends:  # the replay records outcome times
            self.outcomes = pd.concat([x for x in (self.outcomes, _outcome_rows(sends, self.decided)) if x is not None],
                                      ignore_index=True)

    def report(self, until: pd.Timestamp) -> None:
        """Give the service every outcome that happened before `until` (an unsubscribe binds its next decision)."""
        if self.outcomes is None:
            return
        due = self.outcomes["at"] < until
        self.recorded += _give_feedback(self.client, self.outcomes[due])
        self.outcomes = self.outcomes[~due].reset_index(drop=True)

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        self.report(s.at + _CAMPAIGN_HOUR)
        n = self.period.n_users
        offer, channel, hour = np.full(n, -1), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        score, propensity = np.zeros(n), np.ones(n)
        send_ns = np.zeros(n, dtype=np.int64)  # the service's send time: the replay sends then, caps count its local day
        asked = np.flatnonzero(self.period.truth.signup_ns <= s.at.value)  # users who have signed up by then
        now = (s.at + _CAMPAIGN_HOUR).isoformat()
        for start in range(0, len(asked), self.batch):
            rows = asked[start:start + self.batch]
            answer = _post(self.client, "/decide_batch", {
                "user_ids": self.period.user_ids[rows].tolist(), "now": now, "context": {"campaign_id": self.campaign_id}})
            for i, d in zip(rows, answer["decisions"], strict=True):
                self.decisions += 1
                if d.get("holdout") is not None:
                    self.controls += 1
                    self.held_out.add(int(i))
                if not d["actions"]:
                    continue
                a = d["actions"][0]
                offer[i], channel[i] = self.offer_of[a["offer_id"]], self.channel_of[a["channel"]]
                hour[i] = datetime.fromisoformat(a["send_at"]).hour  # the user's local hour
                send_ns[i] = pd.Timestamp(a["send_at"]).value
                score[i], propensity[i] = a["expected_value"], a["propensity"]
                self.decided[(s.day, int(i))] = d["decision_id"]
        return keep_capacity(Choice(offer, channel, hour, score, propensity, send_ns), s.capacity_left)


class WithoutHoldout:
    """`policy`'s choices, except for the users the service held out: the oracle a round is measured against faces
    the same control group (a held-out user is never contacted, and keeps the contact budget the others spend)."""

    def __init__(self, policy, rows: set[int]):
        self.policy, self.rows, self.name = policy, np.array(sorted(rows), dtype=np.int64), policy.name

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        choice = self.policy.choose(s, rng)
        offer = choice.offer.copy()
        offer[self.rows] = -1
        return Choice(offer, choice.channel, choice.hour, choice.score, choice.propensity, choice.send_ns)


class Pending:
    """What the world has decided but nobody has seen yet, kept between rounds in `folder`: future events, outcomes
    not reported yet, and the rounds so far."""

    _FRAMES = ("outcomes", "events")

    def __init__(self, folder: Path):
        self.folder = folder
        self.outcomes, self.events = (self._read(f"{name}.parquet") for name in self._FRAMES)
        state = folder / "state.json"
        self.state = json.loads(state.read_text()) if state.exists() else {"rounds": [], "generated_until_ns": None}

    def _read(self, name: str) -> pd.DataFrame | None:
        path = self.folder / name
        return pd.read_parquet(path) if path.exists() else None

    def save(self) -> None:
        """Write every frame and the state, each replaced whole (a crash leaves the last good copy)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in self._FRAMES:
            df = getattr(self, name)
            if df is not None:
                tmp = self.folder / f".{name}.parquet.tmp"
                df.to_parquet(tmp, index=False)
                tmp.replace(self.folder / f"{name}.parquet")
        tmp = self.folder / ".state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.folder / "state.json")


_EVENT_KEYS = ("user", "ts", "type", "category", "product", "amount", "quantity")


def _as_frame(ev: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({k: ev[k] for k in _EVENT_KEYS})


def _as_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {k: df[k].to_numpy() for k in _EVENT_KEYS}


def _organic(truth: Truth, begin_ns: int, end_ns: int, seed: int) -> dict[str, np.ndarray]:
    """Organic behaviour of every user in [begin, end): the simulator's own process over a later window."""
    rng = np.random.default_rng(seed)
    window = dataclasses.replace(truth, start_ns=begin_ns, end_ns=end_ns)
    ev = organic_events(window, product_prices(7), rng)
    keep = (ev["ts"] >= begin_ns) & (ev["ts"] < end_ns)  # sign-ups before the window are not repeated
    ev = {k: v[keep] for k, v in ev.items()}
    return concat_events([ev, purchase_carts(ev, rng)])


def _outcome_rows(sends: pd.DataFrame, decided: dict[tuple[int, int], str]) -> pd.DataFrame:
    """Every drawn outcome of the round's sends as a feedback to give: decision, outcome, offer, channel, at, revenue."""
    ids = np.array([decided[(int(d), int(u))] for d, u in zip(sends["day"], sends["user_idx"], strict=True)], dtype=object)
    parts = []
    for outcome in _REPORTED:
        at = pd.to_datetime(sends[OUTCOME_COLUMNS[outcome]], utc=True)
        hit = at.notna().to_numpy()
        revenue = sends["revenue"].to_numpy(dtype=float)[hit] if outcome == "converted" else np.full(hit.sum(), np.nan)
        parts.append(pd.DataFrame({"decision_id": ids[hit], "outcome": outcome, "offer_id": sends["offer_id"].to_numpy()[hit],
                                   "channel": sends["channel"].to_numpy()[hit], "at": at[hit], "revenue": revenue}))
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


def _give_feedback(client, outcomes: pd.DataFrame) -> int:
    """Report each outcome to /feedback; returns how many the service recorded as new."""
    recorded = 0
    for r in outcomes.sort_values("at", kind="stable").itertuples(index=False):
        body = {"decision_id": r.decision_id, "outcome": r.outcome, "offer_id": r.offer_id, "channel": r.channel,
                "at": pd.Timestamp(r.at).isoformat()}
        if r.outcome == "converted":
            body["revenue"] = float(r.revenue)
        recorded += bool(_post(client, "/feedback", body)["recorded"])
    return recorded


def _post_events(client, events: pd.DataFrame, batch: int) -> int:
    """The addressed users' behaviour to /events, oldest first."""
    for start in range(0, len(events), batch):
        chunk = events.iloc[start:start + batch]
        _post(client, "/events", {"events": [
            {"user_id": u, "type": t, "ts": pd.Timestamp(ts).isoformat(),
             **({"amount": float(a)} if pd.notna(a) else {})}
            for u, t, ts, a in zip(chunk["user_id"], chunk["type"], chunk["ts"], chunk["amount"], strict=True)]})
    return len(events)


def _sample_rows(n_users: int, n: int | None, seed: int) -> np.ndarray:
    """The rows `Period.sample(n, seed)` keeps."""
    if n is None or n >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, size=n, replace=False))


def _organic_of(purchases: Purchases, rows: np.ndarray, n_users: int) -> Purchases:
    """The purchases of the users `rows`, indexed by their row in the sample."""
    where = np.full(n_users, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    keep = where[purchases.user] >= 0
    return Purchases(where[purchases.user[keep]], purchases.ts[keep], purchases.amount[keep])


def _yard_config(config: ServiceLoopConfig, rules: Rules) -> ReplayConfig:
    return ReplayConfig(days=config.days, seed=config.seed, rules=rules)


def judged_period(settings: Settings, tables: dict[str, pd.DataFrame], truth: Truth) -> Period:
    """The period a round runs in and is judged on: the state the replay of `nextbest evaluate` starts from (every
    contact before the round tires its user, the truth's fatigue), with two differences that make the judgement the
    service's own. Its caps count only the service's own sends (the folded `nb-` rows), as its ledger does: the ledger
    does not import contacts another system made (docs/serving.md). Its eligibility rules read the features the
    service reads (its newest snapshot), so the replay never counts as "ineligible" what the service rightly sent.
    (Derived from the raw tables instead, a user's stage, recency and tenure differed for 0.5 % of the demo world's
    users after a round had moved the world two days past the snapshot: 29 such "violations" in 15,725 sends at 3,000
    users.)"""
    from nextbest.pipelines.evaluate import feature_state

    own = tables["contacts"]["contact_id"].astype(str).str.startswith(PREFIX).to_numpy()
    return feature_state(settings, Period.from_tables(tables, truth, counted=own))


def _yardstick_value(settings: Settings, period: Period, users: dict, replay_config: ReplayConfig) -> float:
    """What the champions in force earn on the fixed yardstick: the first round's users and days, from the state this
    run started in (the features read then), without exploration, by the engine's own EV and choice (the policy gate's
    ModelPolicy); it changes only when the models do, so it shows what the loop has learnt."""
    from nextbest.pipelines.evaluate import model_policies

    greedy = model_policies(settings, period, users=users)[0]
    return float(replay(period, greedy, replay_config).metrics["incremental_revenue"])


def run_service_loop(settings: Settings, client, config: ServiceLoopConfig = ServiceLoopConfig(),
                     progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run `config.rounds` rounds against the service behind `client` (an HTTP client with a base URL, e.g.
    httpx.Client); one row per round."""
    from nextbest.pipelines.retrain import RetrainConfig, retrain

    step = progress or (lambda message: None)
    if not (settings.truth_dir / "truth.json").exists():
        raise FileNotFoundError(f"no simulated truth in {settings.truth_dir}: the loop through the service runs a "
                                "simulated world (`nextbest simulate`, features, `nextbest train`, then `nextbest serve`)")
    operator = load_config(settings.operator_config or settings.home / "operator.yaml")
    rules = Rules.of(operator.caps)
    pending = Pending(settings.home / "service_loop")
    tables = {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}
    truth = Truth.load(settings.truth_dir)
    rows_out = []
    yardstick: tuple[Period, dict, float] | None = None
    for k in range(config.rounds):
        round_no = len(pending.state["rounds"]) + 1
        full = judged_period(settings, tables, truth)
        rows = _sample_rows(full.n_users, config.users, config.seed)
        period = full.sample(config.users, seed=config.seed)
        begin, end = period.start, period.start + pd.Timedelta(days=config.days)
        seed = config.seed + 1000 * round_no

        step(f"round {round_no}: the world's behaviour, {begin.date()} to {end.date()}")
        until = end.value + int(HORIZON_DAYS * DAY_NS)  # a late send's conversion needs the week after the round
        fresh = _organic(truth, pending.state["generated_until_ns"] or begin.value, until, seed)
        pending.events = pd.concat([x for x in (pending.events, _as_frame(fresh)) if x is not None], ignore_index=True)
        pending.state["generated_until_ns"] = until
        organic = _organic_of(Purchases.of_events(_as_arrays(pending.events)), rows, full.n_users)
        # The addressed users' behaviour before the round's end reaches the service as it would live.
        due = pending.events[(pending.events["ts"] < end.value) & np.isin(pending.events["user"], rows)]
        live = pd.DataFrame({"user_id": full.user_ids[due["user"].to_numpy()],
                             "type": np.asarray(EVENT_TYPES, dtype=object)[due["type"].to_numpy()],
                             "ts": pd.to_datetime(due["ts"].to_numpy(), utc=True), "amount": due["amount"].to_numpy()})
        step(f"round {round_no}: {len(live):,} events to /events")
        _post_events(client, live.sort_values("ts", kind="stable"), config.batch)

        step(f"round {round_no}: {config.days} days of /decide_batch for {period.n_users:,} users")
        if yardstick is None:
            from nextbest.pipelines.evaluate import latest_features

            yardstick = (period, latest_features(settings, period.user_ids),
                         replay(period, OraclePolicy(period), _yard_config(config, rules)).metrics["incremental_revenue"])
        yard_value = _yardstick_value(settings, *yardstick[:2], _yard_config(config, rules))
        policy = ServicePolicy(client, period, config.campaign_id, config.batch)
        policy.outcomes = pending.outcomes  # earlier rounds' outcomes that had not happened yet
        result = replay(period, policy, ReplayConfig(days=config.days, seed=seed, rules=rules), organic=organic,
                        record=True, observe=policy.observe)
        oracle = replay(period, WithoutHoldout(OraclePolicy(period), policy.held_out),
                        ReplayConfig(days=config.days, seed=seed, rules=rules), organic=organic)

        step(f"round {round_no}: the outcomes of the round's last day to /feedback")
        policy.report(end)
        pending.outcomes = policy.outcomes

        # The company's event export grows by what happened before the round's end (the sends' effects included).
        if result.events is not None:
            caused = concat_events([result.events, purchase_carts(result.events, np.random.default_rng(seed + 1))])
            caused["user"] = rows[caused["user"]]  # sample rows -> the world's users
            pending.events = pd.concat([pending.events, _as_frame(caused)], ignore_index=True)
        happened = pending.events["ts"].to_numpy() < end.value
        tables["events"] = pd.concat([tables["events"], events_table(_as_arrays(pending.events[happened]), full.user_ids,
                                                                     end.value)], ignore_index=True)
        pending.events = pending.events[~happened].reset_index(drop=True)
        write_raw(tables, settings.raw_dir)
        truth = dataclasses.replace(truth, end_ns=end.value)
        truth.save(settings.truth_dir)

        m, mo = result.metrics, oracle.metrics
        per_k = 1000 / m["contacts"] if m["contacts"] else np.nan
        row = {"round": round_no, "start": begin.date().isoformat(), "days": config.days, "decisions": policy.decisions,
               "controls": policy.controls, "contacts": m["contacts"], "feedback": policy.recorded,
               "incremental_revenue": m["incremental_revenue"], "oracle_revenue": mo["incremental_revenue"],
               "share_of_oracle": m["incremental_revenue"] / mo["incremental_revenue"] if mo["incremental_revenue"] > 0 else np.nan,
               "unsubscribes_per_1k": m["unsubscribes"] * per_k, "complaints_per_1k": m["complaints"] * per_k,
               "violations": m["violations"], "yardstick_revenue": yard_value, "yardstick_oracle": yardstick[2],
               "yardstick_share": yard_value / yardstick[2] if yardstick[2] > 0 else np.nan,
               "violated": {c.removeprefix("broke_"): int(result.sends[c].sum()) for c in result.sends if c.startswith("broke_")
                            and result.sends[c].any()},
               "models": _post(client, "/status", {}).get("models", {})}

        if k < config.rounds - 1:
            step(f"round {round_no}: retraining {', '.join(config.models)} on the service's logs")
            state = retrain(settings, RetrainConfig(trials=config.trials, evaluate=config.policy_gate, models=config.models,
                                                    logs_cutoff=end, uplift_learner=config.uplift_learner), resume=False)
            row["from_logs"] = state["steps"]["ingest"].get("logs", {})
            tables = {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}
            reloaded = _post(client, "/reload", {})
            row["reloaded"] = reloaded["model_versions"]
        pending.state["rounds"].append({key: (v.item() if isinstance(v, np.generic) else v) for key, v in row.items()})
        pending.save()
        rows_out.append(row)
    return pd.DataFrame(pending.state["rounds"]).set_index("round")


def demo_round(settings: Settings, users: int = 500, days: int = 2, holdout: float = 0.1,
               before: Callable[[list[dict]], None] | None = None,
               after: Callable[[object, pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """`make demo`'s last steps: start the decision service on simulated-time settings, hand `before` its answers to
    a few sample requests, then run one round through it (no retraining), then hand `after` the client and the
    round's table while the service still runs (the demo's campaign step reuses it); the campaign `loop` keeps a
    `holdout` share of its users as its control group."""
    import httpx

    from nextbest.pipelines.serve_commands import demo_requests, running_service
    from nextbest.serving.config import write_config

    path = settings.operator_config or settings.home / "operator.yaml"
    operator = load_config(path)
    if "loop" not in operator.holdout.campaigns:
        campaigns = {**operator.holdout.campaigns, "loop": holdout}
        write_config(operator.model_copy(update={"holdout": operator.holdout.model_copy(update={"campaigns": campaigns})}),
                     path, note="the demo added a 10 % hold-out for its campaign `loop`")
    with running_service(simulated_clock(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
        if before is not None:
            before(demo_requests(settings, client=client))
        table = run_service_loop(settings, client, ServiceLoopConfig(rounds=1, days=days, users=users))
        if after is not None:
            after(client, table)
        return table
