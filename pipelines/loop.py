"""The closed loop in simulation: decide (with exploration) -> outcomes -> feedback -> retrain, for K rounds.

Each round runs the NBA policy of the current champions over the next `days` days of the simulated world,
exploring with probability epsilon and holding a share of its sends out as a control group, both logged
with their probabilities. The world answers (outcomes from the ground-truth response model, organic
behaviour going on), and everything a real company would have seen by the end of the round is fed back
into the raw tables: new events, the contact log with the outcomes known so far (an outcome that happens
after the round ends is revealed in a later round), and suppressions from unsubscribes and complaints.
Then the retraining pipeline rebuilds the features and trains challengers, promoted only if the policy
with them earns more over the next period than the policy with the champions (its policy gate).

Two values per round, both the expected incremental revenue under the truth: what the round's sends earned
(next to the oracle's over the same days from the same state; the oracle obeys the same contact rules), and
what the round's champions earn on a fixed yardstick: the same users, from the state the loop started in,
over the same days, without exploration. The first moves with the world (users churn, unsubscribe, tire);
the second changes only with the models, so it shows what the loop has learnt. The world
advances in place: the raw tables and the truth's end move forward by `days` per round. Pending
outcomes and events (those after the current end) wait in `<home>/loop/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.contract import TABLES
from nextbest.features.ingest import read_raw, write_raw
from nextbest.features.settings import Settings
from nextbest.pipelines.service_loop import Pending, _as_arrays, _as_frame, _organic
from nextbest.simulation.behaviour import concat_events, purchase_carts
from nextbest.simulation.campaigns import Purchases
from nextbest.simulation.clock import DAY_NS, NAT, to_utc_series
from nextbest.simulation.policies import OraclePolicy
from nextbest.simulation.replay import OUTCOMES, Period, ReplayConfig, replay
from nextbest.simulation.response import HORIZON_DAYS
from nextbest.simulation.truth import Truth
from nextbest.simulation.world import events_table

__all__ = ["LoopConfig", "run_loop", "write_loop_chart"]


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 3
    days: int = 14  # per round: the first week's sends have their full 7-day outcome window by the round's end
    epsilon: float = 0.1  # exploration rate of the NBA policy
    control_share: float = 0.1  # share of its sends held out (no contact), logged as the control group
    trials: int = 2  # Optuna trials per LightGBM model at each retraining
    models: tuple[str, ...] = ("conversion", "uplift", "send_time", "churn")  # the models the NBA policy uses
    uplift_learner: str = "auto"  # uplift learner at each retraining: auto (cross-fitted choice) or t, x, dr, funnel
    seed: int = 11
    yardstick_users: int | None = 4_000  # users in the fixed yardstick period (None = all)
    policy_gate: bool = True  # promote challengers only if the policy with them earns more (pipelines/retrain.py)


def _contacts_rows(result, round_no: int, period: Period, purchases: Purchases) -> pd.DataFrame:
    """The round's sends and held-out controls as contact-log rows, outcomes complete (revealed later)."""
    s = result.sends
    sends = pd.DataFrame({
        "user_id": period.user_ids[s["user_idx"].to_numpy()], "sent_at": s["send_at"],
        "offer_id": s["offer_id"].astype(object), "channel": s["channel"].astype(object), "variant": "treatment",
        "propensity": s["propensity"].astype(float), **{c: s[c] for c in OUTCOMES}, "revenue": s["revenue"],
    })
    c = result.controls
    u = c["user_idx"].to_numpy(dtype=np.int64)
    at = pd.DatetimeIndex(c["decided_at"]).asi8 if len(c) else np.zeros(0, dtype=np.int64)
    org_ns, org_rev = purchases.first_after(u, at, HORIZON_DAYS)
    nothing = to_utc_series(np.full(len(u), NAT))  # a hold-out received nothing: only its organic buying shows
    controls = pd.DataFrame({
        "user_id": period.user_ids[u], "sent_at": c["decided_at"], "offer_id": None, "channel": None,
        "variant": "control", "propensity": c["propensity"].astype(float),
        **{col: to_utc_series(org_ns) if col == "converted_at" else nothing for col in OUTCOMES},
        "revenue": np.where(org_ns != NAT, org_rev, 0.0),
    })
    rows = pd.concat([sends, controls], ignore_index=True).sort_values("sent_at", kind="stable", ignore_index=True)
    rows.insert(0, "contact_id", [f"L{round_no:03d}-{i:07d}" for i in range(len(rows))])
    rows.insert(3, "campaign_id", f"loop{round_no:03d}")
    return rows


def _revealed(pending: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Loop contacts as known at `end`: an outcome after it has not happened yet."""
    out = pending.copy()
    for col in OUTCOMES:
        out[col] = out[col].where(out[col] < end)
    out["revenue"] = out["revenue"].where(out["converted_at"].notna(), 0.0)
    return out


def _feedback(tables: dict[str, pd.DataFrame], pending: Pending, ids: np.ndarray, begin: pd.Timestamp,
              end: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The raw tables at `end`: new events, the contact log with outcomes known so far, new suppressions."""
    out = dict(tables)
    ev = pending.events
    due = ev["ts"].to_numpy() < end.value
    new_events = events_table(_as_arrays(ev[due]), ids, end.value) if due.any() else None
    pending.events = ev[~due].reset_index(drop=True)
    if new_events is not None:
        out["events"] = pd.concat([tables["events"], new_events], ignore_index=True)
    loop = _revealed(pending.contacts, end)
    old = tables["contacts"]
    old = old[~old["contact_id"].astype(str).str.startswith("L")]
    out["contacts"] = pd.concat([old.astype({"offer_id": object, "channel": object, "campaign_id": object,
                                             "contact_id": object, "user_id": object}),
                                 loop[old.columns.intersection(loop.columns)]], ignore_index=True)
    supp = []
    for col, reason in (("unsubscribed_at", "opt_out"), ("complained_at", "complaint")):
        t = loop[col]
        hit = t.notna() & (t >= begin) & (t < end)
        supp.append(pd.DataFrame({"user_id": loop.loc[hit, "user_id"].astype(object), "channel": loop.loc[hit, "channel"].astype(object),
                                  "reason": reason, "since": t[hit]}))
    base = tables["suppressions"].astype({"user_id": object, "channel": object, "reason": object})
    out["suppressions"] = pd.concat([base, *supp], ignore_index=True)
    return out


def run_loop(settings: Settings, config: LoopConfig = LoopConfig(),
             progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run `config.rounds` rounds of the closed loop on the simulated world in `settings.home`; one row per round."""
    from nextbest.pipelines.evaluate import champion_set, model_policies, operator_rules
    from nextbest.pipelines.retrain import RetrainConfig, retrain

    step = progress or (lambda message: None)
    if not (settings.truth_dir / "truth.json").exists():
        raise FileNotFoundError(f"no simulated truth in {settings.truth_dir}: the closed loop runs in simulation "
                                "(`nextbest simulate`, then `nextbest features build/apply/materialize` and `nextbest train`)")
    pending = Pending(settings.home / "loop")
    tables = {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}
    truth = Truth.load(settings.truth_dir)
    yardstick = Period.from_tables(tables, truth).sample(config.yardstick_users, seed=config.seed)
    rules = operator_rules(settings)
    yard_config = ReplayConfig(days=config.days, seed=config.seed, rules=rules)
    step("yardstick: the oracle")
    yard_oracle = replay(yardstick, OraclePolicy(yardstick), yard_config).metrics["incremental_revenue"]
    rows = []
    for k in range(config.rounds):
        round_no = len(pending.state["rounds"]) + 1
        period = Period.from_tables(tables, truth)
        begin, end = period.start, period.start + pd.Timedelta(days=config.days)
        seed = config.seed + 1000 * round_no

        step(f"round {round_no}: organic behaviour of {period.n_users:,} users")
        # Organic events up to a week past the round: a late send's logged conversion needs them.
        until = end.value + int(HORIZON_DAYS * DAY_NS)
        since = pending.state["generated_until_ns"] or begin.value
        fresh = _organic(truth, since, until, seed)
        pending.events = pd.concat([x for x in (pending.events, _as_frame(fresh)) if x is not None], ignore_index=True)
        pending.state["generated_until_ns"] = until
        ev = _as_arrays(pending.events)
        purchases = Purchases.of_events(ev)

        models = champion_set(settings)
        step(f"round {round_no}: the champions on the yardstick")
        greedy = model_policies(settings, yardstick, models=models, as_of=yardstick.start)[0]
        yard_value = replay(yardstick, greedy, yard_config).metrics["incremental_revenue"]

        step(f"round {round_no}: deciding with the champions (epsilon {config.epsilon})")
        nba = dataclasses.replace(model_policies(settings, period, epsilon=config.epsilon, models=models)[0],
                                  name="nba")
        replay_config = ReplayConfig(days=config.days, seed=seed, control_share=config.control_share, rules=rules)
        result = replay(period, nba, replay_config, organic=purchases, record=True)
        step(f"round {round_no}: the oracle over the same days")
        oracle = replay(period, OraclePolicy(period), ReplayConfig(days=config.days, seed=seed, rules=rules), organic=purchases)

        m, mo = result.metrics, oracle.metrics
        row = {"round": round_no, "start": begin.date().isoformat(), "days": config.days,
               "contacts": m["contacts"], "controls": len(result.controls), "incremental_revenue": m["incremental_revenue"],
               "oracle_revenue": mo["incremental_revenue"],
               "share_of_oracle": m["incremental_revenue"] / mo["incremental_revenue"] if mo["incremental_revenue"] > 0 else np.nan,
               "yardstick_revenue": yard_value, "yardstick_oracle": yard_oracle,
               "yardstick_share": yard_value / yard_oracle if yard_oracle > 0 else np.nan,
               "net_value": m["net_value"], "unsubscribes": m["unsubscribes"], "complaints": m["complaints"],
               "violations": m["violations"], "models": models.versions()}

        step(f"round {round_no}: feeding back outcomes known on {end.date()}")
        new = _contacts_rows(result, round_no, period, purchases)
        pending.contacts = pd.concat([x for x in (pending.contacts, new) if x is not None], ignore_index=True)
        if result.events is not None:
            caused = concat_events([result.events, purchase_carts(result.events, np.random.default_rng(seed + 1))])
            pending.events = pd.concat([pending.events, _as_frame(caused)], ignore_index=True)
        tables = _feedback(tables, pending, period.user_ids, begin, end)
        write_raw(tables, settings.raw_dir)
        truth = dataclasses.replace(truth, end_ns=end.value)
        truth.save(settings.truth_dir)
        pending.state["rounds"].append({k2: (v if not isinstance(v, np.generic) else v.item()) for k2, v in row.items()})
        pending.save()
        rows.append(row)

        if k < config.rounds - 1:
            step(f"round {round_no}: retraining {', '.join(config.models)}")
            retrain(settings, RetrainConfig(trials=config.trials, evaluate=config.policy_gate, models=config.models,
                                            uplift_learner=config.uplift_learner),
                    resume=False)
    return pd.DataFrame(pending.state["rounds"]).set_index("round")


def write_loop_chart(table: pd.DataFrame, folder: Path) -> Path:
    """Policy value per round (NBA next to the oracle) and its share of the oracle, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = table.index.to_numpy()
    left.plot(x, table["incremental_revenue"], marker="o", label="NBA (champions, exploring)", color="#2b8cbe")
    left.plot(x, table["oracle_revenue"], marker="o", label="oracle, same days", color="#999999")
    left.set_title("incremental revenue per round")
    left.set_xlabel("round")
    left.legend()
    right.plot(x, table["yardstick_share"], marker="o", color="#2b8cbe", label="the round's champions on the yardstick")
    right.plot(x, table["share_of_oracle"], marker="o", color="#9ecae1", label="the round's own sends")
    right.set_title("share of the oracle's incremental revenue")
    right.set_xlabel("round")
    right.set_ylim(0, 1)
    right.legend()
    for ax in (left, right):
        ax.set_xticks(x)
    fig.tight_layout()
    path = folder / "closed_loop.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

