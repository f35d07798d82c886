"""The decision service's own logs as training data: decisions + outcomes -> the contract's contacts table.

The service writes every decision it stores (serving/runtime.py) to `decisions.jsonl` and every first report of
an outcome (`/feedback`, idempotent in the ledger) to `outcomes.jsonl`, user ids as keyed pseudonyms. Retraining
reads them back here into contact-log rows, the form every model trains on:

- each decided action -> a treated row (`variant` "treatment", or "explore" when exploration picked it), with the
  logged propensity and its outcomes; an action reported `not_sent` never reached the user and is dropped;
- each hold-out decision -> a `control` row (no offer, no channel), propensity = the hold-out's share (the chance
  of being in the control group, which uplift training uses); its conversion is the user's own first purchase
  within the window (from the events table), because nothing was sent that could be credited;
- each other "no action" choice -> a `no_action` row with its propensity, P(no contact) (neither treated nor
  control, so models do not train on it, and off-policy evaluation does not judge it: its user's purchases in the
  week after are those of the sends the service made on the other days, not of "no contact");
- every row carries its decision's `no_contact_propensity` (the logged `no_action_propensity`: P(no contact) =
  P(held out) + P(not held out) x P(the policy picks no action)) and `holdout_propensity` (P(held out), every scope
  together); null from logs written before those were logged on every decision. Off-policy evaluation weighs the
  sends and hold-outs it judges among themselves with them (`offpolicy.judged_log`): without them, a hold-out row
  weighed 1 / share also where the policy would not have sent, as if the "no action" decisions the judge leaves out
  were there (SNIPS 4-5 % low on the service's logs, benchmarks/RESULTS.md).

Every row of a decision carries `refused`: the (offer, channel) pairs the service's contact policy refused at that
moment (its logged `reasons`; null = every offer or every channel), as JSON text, so off-policy evaluation credits a
target policy only with actions the service could have sent (`offpolicy.logged_feasibility`).

Pure and idempotent: the rows are a function of the logs, so a rerun over longer logs rebuilds them all. A
decision logged twice counts once; an outcome reported twice keeps its first time. Nothing at or after
`cutoff` is used: a decision or outcome the logs hold from later waits for the next run. Contact ids are
`nb-<decision_id>[-k]`, so `merge_contacts` replaces the rows of earlier runs and keeps exported contacts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.serving.decision_log import pseudonym

__all__ = ["PREFIX", "OUTCOME_COLUMNS", "read_log", "logs_to_contacts", "merge_contacts", "contacts_from_logs",
           "refused_pairs"]

PREFIX = "nb-"  # contact ids derived from the service's logs
WINDOW_DAYS = 7  # a control's purchase within this long after its decision is its conversion (the models' label window)
DEFAULT_CAMPAIGN = "nextbest"  # the contract needs a campaign; decisions asked without one get this
# /feedback outcome -> contacts column (the first report of each counts).
OUTCOME_COLUMNS = {"delivered": "delivered_at", "opened": "opened_at", "clicked": "clicked_at",
                   "converted": "converted_at", "unsubscribed": "unsubscribed_at", "complained": "complained_at"}
_COLUMNS = ["contact_id", "user_id", "sent_at", "campaign_id", "offer_id", "channel", "variant", "propensity",
            *OUTCOME_COLUMNS.values(), "revenue", "refused", "no_contact_propensity", "holdout_propensity"]


def read_log(path: Path) -> list[dict]:
    """The records of a JSON-lines log; a torn last line (a write cut by a crash) is skipped, an absent file is []."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _utc(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")


def logs_to_contacts(decisions: list[dict], outcomes: list[dict], user_of: dict[str, str], cutoff: pd.Timestamp,
                     events: pd.DataFrame | None = None, window_days: int = WINDOW_DAYS) -> pd.DataFrame:
    """Contact-log rows from decision and outcome records known before `cutoff` (UTC).

    `user_of` maps a log pseudonym to the user id (records of users it does not know are left out); `events`
    (user_id, ts, type, amount) gives hold-out users their organic purchases.
    """
    cutoff = pd.Timestamp(cutoff).tz_convert("UTC") if pd.Timestamp(cutoff).tzinfo else pd.Timestamp(cutoff, tz="UTC")
    seen: set[str] = set()
    rows: list[dict] = []
    for d in decisions:
        if d["decision_id"] in seen or d["user_id"] not in user_of or pd.Timestamp(d["at"]) >= cutoff:
            continue  # a duplicate line, an unknown user, or decided after the cut-off (next run)
        seen.add(d["decision_id"])
        base = {"user_id": user_of[d["user_id"]], "campaign_id": d.get("campaign_id") or DEFAULT_CAMPAIGN,
                "refused": refused_pairs(d.get("reasons") or [])}
        # The decision's P(no contact) and P(held out), on every row of it, from a log that records both on every
        # decision (an older log did not: null).
        held_p = d.get("holdout_propensity")
        none_p = d.get("no_action_propensity")
        both = {"no_contact_propensity": none_p if held_p is not None else None, "holdout_propensity": held_p}
        if d.get("actions"):
            for k, a in enumerate(d["actions"]):
                rows.append({**base, "contact_id": f"{PREFIX}{d['decision_id']}" + (f"-{k}" if k else ""),
                             "decision_id": d["decision_id"], "sent_at": a["send_at"], "offer_id": a["offer_id"],
                             "channel": a["channel"], "variant": "explore" if a.get("explored") else "treatment",
                             "propensity": a["propensity"], **both})
        else:
            held = bool(d.get("holdout"))
            # A hold-out row trains with its hold-out's share (an older log logged that as its no_action_propensity).
            share = d.get("holdout_share") or none_p or 1.0
            rows.append({**base, "contact_id": f"{PREFIX}{d['decision_id']}", "decision_id": d["decision_id"],
                         "sent_at": d["at"], "offer_id": None, "channel": None,
                         "variant": "control" if held else "no_action",
                         "propensity": share if held else (none_p or 1.0), **both})
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in _COLUMNS})
    out = pd.DataFrame(rows)
    out["sent_at"] = _utc(out["sent_at"])
    out["propensity"] = out["propensity"].astype(float)
    out["no_contact_propensity"] = out["no_contact_propensity"].astype(float)
    out["holdout_propensity"] = out["holdout_propensity"].astype(float)
    out = _with_outcomes(out, outcomes, cutoff)
    out = _control_conversions(out, events, cutoff, window_days)
    return out[_COLUMNS].sort_values(["sent_at", "contact_id"], kind="stable", ignore_index=True)


def refused_pairs(reasons: list) -> str:
    """The (offer, channel) pairs of a decision's logged `reasons` ([reason, offer, channel] each), as sorted JSON
    text (one value per row, so the contacts table stays flat); null stands for every offer or every channel."""
    return json.dumps(sorted({(r[1], r[2]) for r in reasons}, key=lambda p: (str(p[0]), str(p[1]))))


def _with_outcomes(rows: pd.DataFrame, outcomes: list[dict], cutoff: pd.Timestamp) -> pd.DataFrame:
    """Each action row's first report of each outcome before `cutoff`; rows reported not_sent are dropped."""
    for col in OUTCOME_COLUMNS.values():
        rows[col] = pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]")
    rows["revenue"] = np.where(rows["variant"].isin(["control", "no_action"]), np.nan, 0.0)
    if not outcomes:
        return rows
    o = pd.DataFrame(outcomes)
    o["at"] = _utc(o["at"])
    o = o[o["at"] < cutoff].sort_values("at", kind="stable")
    o = o.drop_duplicates(["decision_id", "offer_id", "channel", "outcome"], keep="first")  # a repeated report counts once
    key = pd.MultiIndex.from_frame(rows[["decision_id", "offer_id", "channel"]].astype(object))
    for outcome, col in OUTCOME_COLUMNS.items():
        hit = o[o["outcome"] == outcome].set_index(["decision_id", "offer_id", "channel"])
        if hit.empty:
            continue
        at = hit["at"].reindex(key)
        rows[col] = at.to_numpy()
        if outcome == "converted":
            rev = hit["revenue"].astype(float).reindex(key).to_numpy()
            rows["revenue"] = np.where(at.notna().to_numpy(), np.nan_to_num(rev), rows["revenue"])
    gone = o[o["outcome"] == "not_sent"].set_index(["decision_id", "offer_id", "channel"]).index
    return rows[~key.isin(gone)].reset_index(drop=True)


def _control_conversions(rows: pd.DataFrame, events: pd.DataFrame | None, cutoff: pd.Timestamp,
                         window_days: int) -> pd.DataFrame:
    """A hold-out row converts with its user's first purchase within `window_days` after the decision (before cutoff)."""
    control = rows.index[rows["variant"] == "control"]
    rows.loc[control, "revenue"] = 0.0
    if events is None or events.empty or not len(control):
        return rows
    buys = events[events["type"] == "purchase"]
    amount = buys["amount"].astype(float) if "amount" in buys else pd.Series(np.nan, index=buys.index)
    # merge_asof on naive UTC times (one resolution on both sides)
    buys = pd.DataFrame({"user_id": buys["user_id"].astype(str).to_numpy(),
                         "ts": pd.to_datetime(buys["ts"], utc=True).dt.tz_convert(None).astype("datetime64[ns]").to_numpy(),
                         "amount": amount.fillna(0.0).to_numpy()})
    buys = buys[buys["ts"] < cutoff.tz_convert(None)].sort_values("ts", kind="stable")
    c = rows.loc[control, ["user_id", "sent_at"]].reset_index()
    c["at"] = c["sent_at"].dt.tz_convert(None).astype("datetime64[ns]")
    c = c.sort_values("at", kind="stable")
    first = pd.merge_asof(c, buys, left_on="at", right_on="ts", by="user_id", direction="forward",
                          tolerance=pd.Timedelta(days=window_days))
    hit = first["ts"].notna().to_numpy()
    idx = first["index"].to_numpy()[hit]
    rows.loc[idx, "converted_at"] = pd.to_datetime(first["ts"].to_numpy()[hit]).tz_localize("UTC")
    rows.loc[idx, "revenue"] = first["amount"].to_numpy()[hit]
    return rows


def merge_contacts(exported: pd.DataFrame | None, from_logs: pd.DataFrame) -> pd.DataFrame:
    """The exported contact log with the rows derived from the logs in place of those of earlier runs."""
    if exported is None or exported.empty:
        return from_logs.reset_index(drop=True)
    keep = exported[~exported["contact_id"].astype(str).str.startswith(PREFIX)]
    if from_logs.empty:
        return keep.reset_index(drop=True)
    cols = list(dict.fromkeys([*keep.columns, *from_logs.columns]))
    parts = [df.reindex(columns=cols).astype({"offer_id": object, "channel": object, "campaign_id": object,
                                              "contact_id": object, "user_id": object})
             for df in (keep, from_logs)]
    return pd.concat(parts, ignore_index=True)


def contacts_from_logs(log_dir: Path, users: pd.DataFrame, cutoff: pd.Timestamp,
                       events: pd.DataFrame | None = None) -> pd.DataFrame:
    """`logs_to_contacts` over the logs in `log_dir`, pseudonyms resolved with its key against `users`."""
    key_path = Path(log_dir) / "pseudonym.key"
    if not key_path.exists():
        return logs_to_contacts([], [], {}, cutoff)
    key = bytes.fromhex(key_path.read_text().strip())
    ids = users["user_id"].astype(str).tolist()
    user_of = {pseudonym(key, u): u for u in ids}
    return logs_to_contacts(read_log(Path(log_dir) / "decisions.jsonl"), read_log(Path(log_dir) / "outcomes.jsonl"),
                            user_of, cutoff, events)


def fold_logs(settings, cutoff: pd.Timestamp | None = None) -> dict:
    """Retraining's ingest of the service's logs: the raw contacts table becomes the exported contacts plus the rows
    from the logs (known before `cutoff`, default now), checked against the contract and swapped in atomically with
    the other raw tables unchanged. Returns counts per variant; {} when the service has logged nothing."""
    from nextbest.features.contract import TABLES, conform
    from nextbest.features.ingest import read_raw, write_raw

    if not (Path(settings.log_dir) / "decisions.jsonl").exists():
        return {}
    cutoff = pd.Timestamp.now(tz="UTC") if cutoff is None else pd.Timestamp(cutoff)
    tables = {t: df for t in TABLES if (df := read_raw(settings.raw_dir, t)) is not None}
    if "users" not in tables:
        raise ValueError("the service's logs cannot become contacts without a users table: ingest the users first")
    rows = contacts_from_logs(settings.log_dir, tables["users"], cutoff, tables.get("events"))
    merged = merge_contacts(tables.get("contacts"), rows)
    tables["contacts"] = conform("contacts", merged, "contacts (exported + the service's logs)")
    write_raw(tables, settings.raw_dir)
    return {"from_logs": int(len(rows)), **{str(k): int(v) for k, v in rows["variant"].value_counts().items()},
            "cutoff": cutoff.isoformat()}
