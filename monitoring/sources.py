"""Where reports get their rows: the exported contacts table plus the decision service's own logs, labelled with
the hold-out each decision fell in and the copy variant each campaign send used; channel costs from the operator
config. The thin shell around `reports.report_frame` (reads disk, writes nothing)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nextbest.monitoring.reports import report_frame

__all__ = ["load_frame", "channel_costs", "log_labels", "service_health", "default_as_of"]


def channel_costs(settings) -> dict[str, float]:
    """Cost of one send per channel, from the operator config in force."""
    from nextbest.serving.config import load_config

    return {c.channel: float(c.cost) for c in load_config(settings.operator_yaml).channels}


def log_labels(decisions: list[dict]) -> pd.DataFrame:
    """Per contact id derived from the logs (`nb-<decision_id>[-k]`): its decision (the unit) and its group
    (a hold-out decision names its scope: `universal` or `campaign:<id>`)."""
    rows = []
    for d in decisions:
        did = d["decision_id"]
        if d.get("actions"):
            rows += [(f"nb-{did}" + (f"-{k}" if k else ""), did, "treated") for k in range(len(d["actions"]))]
        else:
            scope = d.get("holdout")
            group = "no_action" if not scope else "universal" if scope == "universal" else "control"
            rows.append((f"nb-{did}", did, group))
    return pd.DataFrame(rows, columns=["contact_id", "unit", "group"]).drop_duplicates("contact_id")


def _copies(home: Path) -> pd.DataFrame:
    """(decision_id, offer_id) -> copy variant of every campaign send; empty without a campaign store."""
    from nextbest.campaigns.store import CampaignStore, store_path

    path = store_path(home)
    if not path.exists():  # opening the store would create it: a report writes nothing
        return pd.DataFrame(columns=["unit", "offer_id", "copy"])
    store = CampaignStore(path)
    rows = [(s["decision_id"], s["offer_id"], s["variant"]) for c in store.list() for s in store.sends(c.id)]
    return pd.DataFrame(rows, columns=["unit", "offer_id", "copy"]).drop_duplicates(["unit", "offer_id"])


def load_frame(settings) -> pd.DataFrame:
    """The report frame of everything known now: exported contacts + the service's logs, labelled."""
    from nextbest.features.ingest import read_raw
    from nextbest.pipelines.logs_to_contacts import contacts_from_logs, merge_contacts, read_log

    exported = read_raw(settings.raw_dir, "contacts")
    decisions = read_log(Path(settings.log_dir) / "decisions.jsonl")
    users = read_raw(settings.raw_dir, "users")
    from_logs = None
    if decisions and users is not None:
        cutoff = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)  # all that is logged (the clock may run ahead)
        from_logs = contacts_from_logs(settings.log_dir, users, cutoff, read_raw(settings.raw_dir, "events"))
    contacts = merge_contacts(exported, from_logs) if from_logs is not None else exported
    if contacts is None or contacts.empty:
        return report_frame(pd.DataFrame(columns=["contact_id", "campaign_id", "offer_id", "channel", "variant",
                                                  "sent_at", "revenue"]), {})
    contacts = contacts.reset_index(drop=True)
    labels = log_labels(decisions)
    if not labels.empty:
        hit = contacts[["contact_id"]].astype(str).merge(labels, on="contact_id", how="left")
        contacts["unit"] = hit["unit"].to_numpy()  # missing (exported rows): the contact id
        contacts["group"] = hit["group"].to_numpy()  # missing: from the variant
        copies = _copies(settings.home)
        if not copies.empty:
            c = contacts[["unit", "offer_id"]].astype(str).merge(copies, on=["unit", "offer_id"], how="left")
            contacts["copy"] = c["copy"].fillna("").to_numpy()
    return report_frame(contacts, channel_costs(settings))


def default_as_of(frame: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.Timestamp:
    """The end of the data: its last send at or before `now` (a send scheduled for later has not happened), so a
    report over a simulated or exported history is not empty; `now` when nothing was sent before it."""
    now = pd.Timestamp.now(tz="UTC").floor("s") if now is None else now
    sent = frame["sent_at"]
    last = sent[sent <= now].max() if len(frame) else pd.NaT
    return now if pd.isna(last) else pd.Timestamp(last)


def service_health(settings) -> dict:
    """From the decision log: decisions, share answered degraded, share held out, the last decision's time."""
    from nextbest.pipelines.logs_to_contacts import read_log

    decisions = read_log(Path(settings.log_dir) / "decisions.jsonl")
    n = len(decisions)
    degraded = sum(bool(d.get("degraded_reasons")) for d in decisions)
    held = sum(bool(d.get("holdout")) for d in decisions)
    return {"decisions": n, "degraded_share": degraded / n if n else None, "held_out_share": held / n if n else None,
            "last_decision_at": max((d["at"] for d in decisions), default=None)}
