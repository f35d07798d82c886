"""Campaign reports from the contact log: funnels, incremental results against hold-outs, cost and ROI, send
times, daily/weekly/monthly roll-ups. Pure functions of one frame (`report_frame`); no I/O, no simulator.

The unit of the hold-out comparison is the *decision* (one user asked about once): a treated decision may carry
several actions (rows), a hold-out decision carries one row and nothing was sent. Incremental figures are
`treated units x (treated mean - control mean)` with a normal (Welch) interval, the estimate of what the treated
units gained over what they would have got without contact. Funnels count actions (sends).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["PERIODS", "STAGES", "GROUPS", "report_frame", "funnel", "incremental", "channel_roi", "send_time",
           "rollup", "window", "build_report", "Report"]

PERIODS = {"day": pd.Timedelta(days=1), "week": pd.Timedelta(days=7), "month": pd.Timedelta(days=30)}
GRAINS = {"day": ("day",), "week": ("day", "week"), "month": ("day", "week", "month")}  # roll-ups shown per period
STAGES = ("delivered", "opened", "clicked", "converted")  # the funnel after `sent`
GROUPS = ("treated", "control", "universal", "no_action")
_CONTROL_VARIANTS = {"control": "control", "no_action": "no_action"}
_POLICY_VARIANTS = {"treatment", "explore", "control", "no_action"}  # the log's variants that are not copies
Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def report_frame(contacts: pd.DataFrame, costs: dict[str, float]) -> pd.DataFrame:
    """The contract's contacts table as the reports read it: one row per action or hold-out decision.

    Optional columns the caller may add (missing values take the default): `unit` (the decision a row belongs to;
    default the contact id), `group` (treated / control / universal / no_action; default from `variant`), `copy`
    (the copy variant; default `variant` when it names a copy). `costs` is the cost of one send per channel (the operator config).
    """
    c = contacts
    variant = c["variant"].astype(object).where(c["variant"].notna(), "treatment") if "variant" in c else \
        pd.Series("treatment", index=c.index, dtype=object)
    group = variant.map(_CONTROL_VARIANTS).fillna("treated")
    if "group" in c:  # given where known (the service's logs), from the variant elsewhere
        group = c["group"].astype(object).where(c["group"].notna(), group)
    if "copy" in c:
        copy = c["copy"].astype(object).fillna("")
    else:
        copy = variant.where(~variant.isin(_POLICY_VARIANTS), "")
    treated = (group == "treated").to_numpy()
    channel = c["channel"].astype(object)
    # Labels as categories and the unit as an integer code: every group-by below runs on codes, not strings.
    cat = lambda s: pd.Categorical(s.astype(object).fillna("").astype(str).to_numpy())  # noqa: E731
    out = pd.DataFrame({
        "unit": pd.factorize((c["unit"].astype(object).where(c["unit"].notna(), c["contact_id"]) if "unit" in c
                              else c["contact_id"]).astype(str).to_numpy())[0],
        "campaign_id": cat(c["campaign_id"]),
        "offer_id": cat(c["offer_id"]),
        "channel": cat(channel),
        "copy": cat(copy),
        "group": pd.Categorical(group.to_numpy(), categories=GROUPS),
        "sent_at": _utc(c["sent_at"]).array,  # tz-aware array; to_numpy() would box every value
    })
    for stage in STAGES:
        col = f"{stage}_at"
        out[col] = _utc(c[col]).array if col in c else pd.NaT
    out["revenue"] = pd.to_numeric(c["revenue"], errors="coerce").fillna(0.0).to_numpy() if "revenue" in c else 0.0
    # A converted row without revenue still converted; revenue without a conversion time does not count.
    out.loc[out["converted_at"].isna(), "revenue"] = 0.0
    cost = channel.map({str(k): float(v) for k, v in costs.items()}).astype(float).fillna(0.0).to_numpy()
    out["cost"] = np.where(treated, cost, 0.0)  # only a send costs; a hold-out or no-action row sent nothing
    return out


def _utc(values) -> pd.Series:
    """UTC datetimes from datetime columns (as they are, no text round trip) or ISO-8601 text."""
    s = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
    return pd.to_datetime(s.astype(object), utc=True, format="ISO8601")


def window(frame: pd.DataFrame, period: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """The rows sent in the `period` (day / week / month = 30 days) that ends at `as_of` (exclusive of its start)."""
    start = as_of - PERIODS[period]
    return frame[(frame["sent_at"] > start) & (frame["sent_at"] <= as_of)]


def _counts(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sends, each stage reached, revenue and cost per `by`, with each stage's rate per send."""
    flags = pd.DataFrame({"sent": np.ones(len(rows), dtype=np.int64)}, index=rows.index)
    for stage in STAGES:
        flags[stage] = rows[f"{stage}_at"].notna().astype(np.int64)
    flags["revenue"] = rows["revenue"]
    flags["cost"] = rows["cost"]
    keys = [rows[k] for k in by]
    out = flags.groupby(keys, sort=True, observed=True).sum() if by else flags.sum().to_frame().T
    for stage in STAGES:
        out[f"{stage}_rate"] = out[stage] / out["sent"]
    return out.reset_index() if by else out


def funnel(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """sent -> delivered -> opened -> clicked -> converted of the treated actions per `by` (rates per send)."""
    return _counts(frame[frame["group"] == "treated"], by)


def _units(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per decision: converted (any action), revenue and cost summed over its actions."""
    g = rows.assign(converted=rows["converted_at"].notna().astype(float)).groupby(
        ["campaign_id", "group", "unit"], sort=False, observed=True)
    return g.agg(converted=("converted", "max"), revenue=("revenue", "sum"), cost=("cost", "sum")).reset_index()


def _lift(t: pd.DataFrame, c: pd.DataFrame, z: float) -> dict:
    """Treated total gain over control means, with a Welch normal interval, for conversions and revenue."""
    n_t, n_c = len(t), len(c)
    out = {"treated_units": n_t, "control_units": n_c, "cost": float(t["cost"].sum()),
           "treated_conversion_rate": t["converted"].mean() if n_t else np.nan,
           "control_conversion_rate": c["converted"].mean() if n_c else np.nan}
    for name, col in (("conversions", "converted"), ("revenue", "revenue")):
        if n_t < 2 or n_c < 2:  # no variance estimate: no honest interval, so no figure
            out.update({f"incremental_{name}": np.nan, f"incremental_{name}_low": np.nan,
                        f"incremental_{name}_high": np.nan})
            continue
        diff = t[col].mean() - c[col].mean()
        var_t, var_c = t[col].var(ddof=1), c[col].var(ddof=1)
        # The control term uses the larger of the two variances: a control group is small and conversions are
        # rare, so its own variance (from a handful of buyers) is often far too low, and the interval too narrow
        # (benchmarks/bench_report_intervals.py: 70 % coverage on the simulated world with the plain Welch term).
        se = np.sqrt(var_t / n_t + max(var_c, var_t) / n_c)
        out.update({f"incremental_{name}": n_t * diff, f"incremental_{name}_low": n_t * (diff - z * se),
                    f"incremental_{name}_high": n_t * (diff + z * se)})
    out["roi"] = (out["incremental_revenue"] - out["cost"]) / out["cost"] if out["cost"] > 0 else np.nan
    return out


def incremental(frame: pd.DataFrame, z: float = Z95) -> pd.DataFrame:
    """Per campaign and over all campaigns: treated decisions against the campaign's own control and against the
    universal hold-out; incremental conversions and revenue (95 % intervals), cost and ROI on incremental revenue."""
    units = _units(frame[frame["group"].isin(["treated", "control", "universal"])])
    rows = []
    for campaign, part in [*units.groupby("campaign_id", sort=True, observed=True), ("(all)", units)]:
        treated = part[part["group"] == "treated"]
        for against in ("control", "universal"):
            control = part[part["group"] == against]
            if not len(control):
                continue
            rows.append({"campaign_id": campaign, "against": against, **_lift(treated, control, z)})
    cols = ["campaign_id", "against", "treated_units", "control_units", "treated_conversion_rate",
            "control_conversion_rate", "incremental_conversions", "incremental_conversions_low",
            "incremental_conversions_high", "incremental_revenue", "incremental_revenue_low",
            "incremental_revenue_high", "cost", "roi"]
    return pd.DataFrame(rows, columns=cols)


def channel_roi(frame: pd.DataFrame) -> pd.DataFrame:
    """Per channel: sends, cost, conversions, revenue, and incremental revenue = its revenue minus what its decisions
    would have earned at their campaign's control mean (spread over a decision's actions); ROI on that.

    Channels are chosen by the policy, not at random, so this is attribution against the campaign's baseline, not
    a randomised comparison between channels."""
    units = _units(frame[frame["group"].isin(["control", "universal"])])
    base = units.groupby("campaign_id", observed=True)["revenue"].mean()  # per hold-out decision, both kinds pooled
    treated = frame[frame["group"] == "treated"]
    actions = treated.groupby("unit")["unit"].transform("size")
    baseline = treated["campaign_id"].astype(object).map(base).astype(float).fillna(0.0) / actions
    out = _counts(treated.assign(baseline=baseline), ["channel"])
    out["baseline_revenue"] = baseline.groupby(treated["channel"], observed=True).sum().reindex(out["channel"]).to_numpy()
    out["incremental_revenue"] = out["revenue"] - out["baseline_revenue"]
    out["roi"] = np.where(out["cost"] > 0, (out["incremental_revenue"] - out["cost"]) / out["cost"].where(
        out["cost"] > 0, 1.0), np.nan)
    return out[["channel", "sent", "converted", "revenue", "baseline_revenue", "incremental_revenue", "cost", "roi"]]


def send_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Per channel and UTC hour the send was scheduled for (the chosen hour): sends, open/click/conversion rates, and
    the share of delivered sends delivered within that hour (the hour actually sent)."""
    t = frame[(frame["group"] == "treated") & (frame["channel"] != "")]
    hour = t["sent_at"].dt.hour.rename("hour")
    out = _counts(t.assign(hour=hour), ["channel", "hour"])
    delivered = t["delivered_at"]
    on_time = (delivered.notna() & (delivered.dt.floor("h") == t["sent_at"].dt.floor("h"))).astype(np.int64)
    on = on_time.groupby([t["channel"], hour], observed=True).sum().reindex(pd.MultiIndex.from_frame(out[["channel", "hour"]]))
    out["delivered_in_hour_share"] = on.to_numpy() / out["delivered"].where(out["delivered"] > 0).to_numpy()
    return out[["channel", "hour", "sent", "delivered", "opened_rate", "clicked_rate", "converted_rate",
                "delivered_in_hour_share"]]


_FREQ = {"day": "D", "week": "W-SUN", "month": "M"}  # weeks start on Monday


def rollup(frame: pd.DataFrame, grain: str) -> pd.DataFrame:
    """Treated funnel, revenue and cost, and hold-out decisions, per day / week (from Monday) / calendar month."""
    start = frame["sent_at"].dt.tz_convert(None).dt.to_period(_FREQ[grain]).dt.start_time
    out = _counts(frame[frame["group"] == "treated"].assign(period_start=start), ["period_start"])
    held = frame[frame["group"].isin(["control", "universal"])]
    held_units = held.groupby(start.loc[held.index])["unit"].nunique()
    out["held_out"] = held_units.reindex(out["period_start"]).fillna(0).astype(np.int64).to_numpy()
    out.insert(0, "grain", grain)
    return out


@dataclass(frozen=True)
class Report:
    """The tables of one report and the window they cover."""

    period: str
    start: pd.Timestamp
    end: pd.Timestamp
    tables: dict[str, pd.DataFrame]

    def as_json(self) -> dict:
        """Plain JSON (NaN -> null, timestamps -> ISO text), the same figures as the CSV files."""
        def rows(df: pd.DataFrame) -> list[dict]:
            d = df.copy()
            for col in d.columns:
                if pd.api.types.is_datetime64_any_dtype(d[col]):
                    d[col] = d[col].map(lambda v: None if pd.isna(v) else v.isoformat())
            d = d.astype(object).where(d.notna(), None)
            return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                    for r in d.to_dict("records")]
        return {"period": self.period, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "tables": {name: rows(df) for name, df in self.tables.items()}}


def build_report(frame: pd.DataFrame, period: str, as_of: pd.Timestamp) -> Report:
    """Every table of the report over the `period` ending at `as_of` (UTC)."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; one of {', '.join(PERIODS)}")
    rows = window(frame, period, as_of)
    tables = {
        "funnel_campaign": funnel(rows, ["campaign_id"]),
        "funnel_offer": funnel(rows, ["offer_id"]),
        "funnel_copy": funnel(rows, ["campaign_id", "offer_id", "copy"]),
        "funnel_channel": funnel(rows, ["channel"]),
        "incremental": incremental(rows),
        "channel_roi": channel_roi(rows),
        "send_time": send_time(rows),
        "rollup": pd.concat([rollup(rows, g) for g in GRAINS[period]], ignore_index=True),
    }
    return Report(period, as_of - PERIODS[period], as_of, tables)
