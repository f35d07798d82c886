"""Off-policy estimates from the decision service's own logs against the simulated truth, and row by row.

Usage (after `make demo`, on its home; the home is copied, never changed):
  python benchmarks/bench_ope_service.py --home DIR [--users 3000] [--days 10] [--spacing 2/168|0] [--judge raw]
                                          [--epsilon 0.2] [--seed 11] [--keep DIR]

One round of `nextbest loop --service` in process (BentoML's ASGI app through a test client, a fresh ledger, campaign
`loop` with a 10 % hold-out, exploration epsilon 0.2 so the log has support) for `--users` users over `--days` days; the
decision and outcome logs are folded into contacts (`logs_to_contacts.fold_logs`), then `evaluate.off_policies` judges
the NBA and propensity-only policies on the decisions with a full 7-day outcome window, next to the simulator's truth.
Row by row: each variant's mean logged reward (conversion within 7 days) against the truth's P(convert) of the logged
action at its send time (fatigue from the judged log's sends, as the round's world counts it).
`--spacing`: the caps' spacing rule for the round (default: the home's caps); `--judge raw`: judge the round's sends
on stages, recency and tenure re-derived from the raw tables (as before issue 16's fifth session) instead of the
features the service reads, to count the "ineligible" sends that difference makes. `--epsilon`: the round's
exploration rate (the shipped operator config has 0.05); `--seed`: the round's seed (which users, the world's draws);
`--keep DIR`: a copy of the round's home before judging (judge it again with `--logs-of DIR`). Each estimate is printed
with its interval's standard error (clustered by user), the per-row one beside it (`se_rows`, `se_ratio`), and
whether the interval covers the truth (`covered`).

  python benchmarks/bench_ope_service.py --logs-of DIR [--since 2026-10-01]

judges the logs a finished `nextbest loop` left in home DIR instead (copied, never changed): no round is run; the
decisions from `--since` (default: the first round's start in DIR/service_loop/state.json) up to the world's end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", type=Path, help="a demo home: run one round through the service on a copy, then judge it")
    source.add_argument("--logs-of", type=Path, help="a home `nextbest loop` ran in: judge its logs (on a copy)")
    parser.add_argument("--since", default="", help="with --logs-of: judge decisions from this date on")
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--spacing", default="")
    parser.add_argument("--judge", choices=["features", "raw"], default="features")
    parser.add_argument("--keep", type=Path, default=None, help="copy the round's home here before it is deleted")
    parser.add_argument("--epsilon", type=float, default=0.2, help="the round's exploration rate (shipped: 0.05)")
    parser.add_argument("--seed", type=int, default=11, help="the round's seed (users sampled, exploration draws)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ope-"))
    if args.logs_of is not None:
        shutil.copytree(args.logs_of, work / "home")
        home = Settings(home=work / "home")
        rounds = json.loads((home.home / "service_loop" / "state.json").read_text())["rounds"]
        start = pd.Timestamp(args.since or rounds[0]["start"], tz="UTC")
        end = pd.Timestamp(json.loads((home.truth_dir / "truth.json").read_text())["end_ns"], tz="UTC")
        print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}: the logs of {args.logs_of}, "
              f"{len(rounds)} rounds, decisions from {start.date()} to {end.date()}")
        judge(home, start, end)
        shutil.rmtree(work, ignore_errors=True)
        return
    # A fresh ledger: a copied ledger identity without its store is a lost ledger (no contact, by design).
    shutil.copytree(args.home, work / "home", ignore=shutil.ignore_patterns("ledger.*", "logs", "service_loop"))
    home = Settings(home=work / "home")
    os.environ["NEXTBEST_HOME"] = str(home.home)

    from nextbest.serving.config import Exploration, Holdout, load_config, write_config

    config = load_config(home.home / "operator.yaml")
    caps = config.caps
    if args.spacing:
        n, _, hours = args.spacing.partition("/")
        caps = caps.model_copy(update={"spacing_contacts": int(n), "spacing_hours": int(hours or caps.spacing_hours)})
    write_config(config.model_copy(update={"holdout": Holdout(campaigns={"loop": 0.1}), "caps": caps,
                                           "exploration": Exploration(method="epsilon", rate=args.epsilon)}),
                 home.home / "operator.yaml", note=f"bench_ope_service.py: hold-out 10 %, exploration {args.epsilon}")
    from nextbest.pipelines import service_loop
    from nextbest.pipelines.service_loop import SIMULATED_CLOCK_ENV, ServiceLoopConfig, run_service_loop

    if args.judge == "raw":
        from nextbest.pipelines.logs_to_contacts import PREFIX
        from nextbest.simulation.replay import Period

        service_loop.judged_period = lambda settings, tables, truth: Period.from_tables(
            tables, truth, counted=tables["contacts"]["contact_id"].astype(str).str.startswith(PREFIX).to_numpy())
    print(f"spacing {caps.spacing_contacts}/{caps.spacing_hours}, judged on {args.judge}, exploration {args.epsilon}, "
          f"seed {args.seed}")

    os.environ.update(SIMULATED_CLOCK_ENV)
    from starlette.testclient import TestClient

    from nextbest.serving.service import NextBest

    started = time.perf_counter()
    with TestClient(NextBest.to_asgi(), base_url="http://127.0.0.1:3000") as client:
        table = run_service_loop(home, client, ServiceLoopConfig(rounds=1, days=args.days, users=args.users, models=(),
                                                                           seed=args.seed))
    print(f"{platform.node()} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}, {args.users} users, {args.days} days, "
          f"round {time.perf_counter() - started:.0f} s ({time.process_time():.0f} CPU-s so far), "
          f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(table.drop(columns=["models"]).T.to_string())
    start = pd.Timestamp(table["start"].iloc[0], tz="UTC")
    if args.keep is not None:
        shutil.copytree(home.home, args.keep)
    judge(home, start, start + pd.Timedelta(days=args.days))
    shutil.rmtree(work, ignore_errors=True)


def judge(home: Settings, start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Fold the home's service logs up to `end`, then judge the NBA and propensity-only policies on the decisions from
    `start` with a full outcome window (IPS, SNIPS, DR against the truth), and the logged rewards row by row."""
    from nextbest.pipelines.evaluate import (
        _decisions,
        champion_set,
        load_period,
        model_policies,
        off_policies,
    )
    from nextbest.pipelines.logs_to_contacts import PREFIX, fold_logs
    from nextbest.simulation.response import recent_contacts
    from nextbest.simulation.truth import Oracle
    from nextbest.training.datasets import outcome_within

    print(fold_logs(home, cutoff=end))
    world, tables = load_period(home)
    every = tables["contacts"]  # the users remember every contact (the round's world counts them all in the fatigue)
    own = every["contact_id"].astype(str).str.startswith(PREFIX)
    tables = {**tables, "contacts": every[own]}
    cutoff, logged = _decisions(home, tables, world, since=start)
    nba, propensity_only = model_policies(home, world, models=champion_set(home), as_of=cutoff)
    for name, ope in off_policies(home, {nba.name: nba, propensity_only.name: propensity_only}, world, logged,
                                   seen=every).items():
        print(f"\n{name}: {ope.attrs['matched']:,} of {int(ope['n'].iloc[0]):,} judged decisions take the logged action")
        if "simulated_truth" in ope:
            ope["covered"] = (ope["ci_low"] <= ope["simulated_truth"]) & (ope["simulated_truth"] <= ope["ci_high"])
        ope["se_ratio"] = ope["se"] / ope["se_rows"]  # clustered by user / per row
        print(ope.to_markdown(index=False, floatfmt=".4f"))

    held_out_by_state(home, start, end - pd.Timedelta(days=7))
    c = logged["contacts"]
    c = c[c["variant"] != "no_action"].reset_index(drop=True)  # the judged rows (evaluate.judged_log)
    oracle = Oracle(world.truth, world.offers)
    u = pd.Index(world.user_ids).get_indexer(c["user_id"].astype(str))
    sent = pd.to_datetime(c["sent_at"], utc=True)
    sent_rows = c["channel"].notna().to_numpy()
    truth = oracle.p_organic(u, sent)
    # Fatigue over every contact before each judged one, not only the judged log's (as the round's world counts it).
    tired = pd.Series(recent_contacts(every.reset_index(drop=True)), index=every["contact_id"].astype(str).to_numpy())
    truth[sent_rows] = oracle.p_convert(u[sent_rows], c.loc[sent_rows, "offer_id"].astype(str).to_numpy(),
                                        c.loc[sent_rows, "channel"].astype(str).to_numpy(), sent[sent_rows],
                                        recent_contacts=tired.reindex(c["contact_id"].astype(str)).to_numpy()[sent_rows])
    rows = pd.DataFrame({"variant": c["variant"], "logged": outcome_within(c, "converted_at", 7), "truth": truth})
    out = rows.groupby("variant").agg(n=("logged", "size"), logged=("logged", "mean"), truth=("truth", "mean"))
    out["error"] = out["logged"] / out["truth"] - 1
    out["z"] = (out["logged"] - out["truth"]) / np.sqrt(out["truth"] * (1 - out["truth"]) / out["n"])
    print("\nrow by row: mean logged reward against the truth of the logged action")
    print(out.to_markdown(floatfmt=".4f"))


def held_out_by_state(home: Settings, start: pd.Timestamp, until: pd.Timestamp) -> None:
    """From the decision log (decisions from `start` to `until`): the share held out among the decisions where the
    policy would send (P(no action) < 0.5) and where it would not, against the logged P(held out). A stable per-user
    hold-out keeps its users uncontacted, so their caps never close every action: the held-out share among the
    "would send" decisions is above the logged one, which IPS (unnormalised) cannot see; SNIPS divides it out."""
    rows = [json.loads(line) for line in (home.log_dir / "decisions.jsonl").read_text().splitlines() if line.strip()]
    d = pd.DataFrame({"at": pd.to_datetime([r["at"] for r in rows], utc=True),
                      "held": [bool(r.get("holdout")) for r in rows],
                      "none": [r.get("no_action_propensity") for r in rows],
                      "logged": [r.get("holdout_propensity") for r in rows]})
    d = d[(d["at"] >= start) & (d["at"] < until)]
    if d["logged"].isna().any():
        return  # a log from before P(held out) was logged on every decision
    d["policy_none"] = (d["none"] - d["logged"]) / (1 - d["logged"])
    d["state"] = np.where(d["policy_none"] < 0.5, "would send", "would not send")
    out = d.groupby("state").agg(decisions=("held", "size"), held_out=("held", "mean"), logged=("logged", "mean"),
                                 every_action_closed=("policy_none", lambda p: float((p > 0.999).mean())))
    print("\nheld out by the policy's state (decisions with a full outcome window)")
    print(out.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
