"""Operator configuration: offers, channels, contact caps, triggers and exploration, validated from YAML."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nextbest.features.contract import parse_eligibility, parse_quiet_hours

__all__ = [
    "Offer",
    "Channel",
    "Caps",
    "Trigger",
    "Exploration",
    "Holdout",
    "OperatorConfig",
    "ConfigError",
    "default_config",
    "catalog_config",
    "observed_opt_out_rates",
    "contact_tally",
    "add_tallies",
    "observed_channel_values",
    "write_config",
    "load_config",
    "parse_quiet_hours",
    "ConfigSource",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Offer(_Strict):
    """One offer in the catalog."""

    offer_id: str = Field(min_length=1, description="unique id used in decisions and the contact log")
    name: str = Field("", description="what marketers call it")
    kind: Literal["product", "coupon", "retention"] = Field("product", description="retention offers get the churn boost")
    category: str = Field(min_length=1, description="product category the offer promotes, or 'any'")
    value: float = Field(gt=0, description="value of one conversion, in currency units")
    eligibility: str | None = Field(None, description="rule on features/tags, e.g. `lifecycle_stage in [customer] and recency_days >= 30`")
    valid_from: datetime | None = Field(None, description="not offered before this time (ISO-8601)")
    valid_to: datetime | None = Field(None, description="offered up to, not including, this time (ISO-8601)")
    priority: int = Field(0, description="breaks ties between equally valuable offers (higher wins)")
    lever: float = Field(1.0, ge=0, description="operator weight on the offer's value (1 = neutral, 0 = switch off)")

    @field_validator("eligibility")
    @classmethod
    def _rule_parses(cls, v: str | None) -> str | None:
        parse_eligibility(v)  # raises ValueError naming the clause
        return v

    @model_validator(mode="after")
    def _window(self) -> Offer:
        if self.valid_from and self.valid_to and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be later than valid_from")
        return self


class Channel(_Strict):
    """One channel: what a send costs, when it must stay quiet, how many sends a day it can carry."""

    channel: str = Field(min_length=1, description="push, sms, email, inapp, wechat, ...")
    cost: float = Field(ge=0, description="cost of one send, in currency units")
    quiet_hours: str | None = Field(None, pattern=r"^([01]?\d|2[0-3])-([01]?\d|2[0-3])$",
                                    description="local hours with no sends, start-end, e.g. 22-8")
    daily_capacity: int | None = Field(None, ge=0, description="most sends per UTC day over all users (none = unlimited)")
    requires_consent: bool = Field(True, description="needs consent_<channel> true in the profile")
    opt_out_cost: float = Field(0.0, ge=0, description="what an unsubscribe or complaint on this channel loses: the "
                                "channel's future value to one user (currency); EV subtracts it times the user's risk")
    opt_out_rate: float = Field(0.003, ge=0, le=1, description="prior P(unsubscribe or complaint) per contact; each "
                                "user's own history (unsubscribes and complaints over contacts, 90 days) refines it")


class Caps(_Strict):
    """Frequency caps; days are the user's local calendar days."""

    per_channel_day: int = Field(1, ge=0, description="contacts per user per channel per local day")
    per_channel_week: int = Field(3, ge=0, description="contacts per user per channel over 7 local days")
    per_user_day: int = Field(2, ge=0, description="contacts per user per local day over all channels")
    per_user_week: int = Field(3, ge=0, description="contacts per user over 7 local days over all channels (more "
                               "tires users: unsubscribes and complaints rise and each contact earns less)")
    per_offer: int = Field(1, ge=0, description="times one offer may go to one user within offer_window_days")
    offer_window_days: int = Field(7, ge=1, le=60, description="window of the per-offer cap, in local days")
    # Fatigue is an externality: every contact lowers the open and buy rates of the user's contacts in the next
    # 7 x 24 hours, which one decision's EV does not see. Measured on the demo world (benchmarks/RESULTS.md, issue 16
    # fifth session): 2 in 168 hours earned every policy ~6 % more with a third fewer contacts and a third of the
    # opt-outs; a weekly cap on 7 calendar days, or a finite fatigue cost in the EV, did worse.
    spacing_contacts: int = Field(2, ge=0, description="spacing: no contact when the user already has this many "
                                  "contacts in the last spacing_hours hours, over all channels (0 = off)")
    spacing_hours: int = Field(168, ge=1, le=1440, description="spacing window, in hours (counted in whole UTC hours)")


class Trigger(_Strict):
    """An event rule: `on` an event (and no `unless` event within `wait_minutes`) -> decide among `offers`."""

    name: str = Field(min_length=1)
    on: str = Field(min_length=1, description="event type that fires the trigger, e.g. add_to_cart")
    unless: str | None = Field(None, description="event type that cancels it when it arrives within wait_minutes")
    wait_minutes: int = Field(0, ge=0, le=1440, description="earliest send is this long after the event")
    deadline_minutes: int = Field(60, ge=1, le=10080, description="send no later than this long after the event")
    offers: list[str] = Field(min_length=1, description="offers the triggered decision may choose from")
    channels: list[str] | None = Field(None, description="channels it may use (none = all)")

    @model_validator(mode="after")
    def _deadline_after_wait(self) -> Trigger:
        if self.deadline_minutes <= self.wait_minutes:
            raise ValueError("deadline_minutes must be longer than wait_minutes")
        return self


class Exploration(_Strict):
    """How often the engine tries something other than its best guess, so new policies can be evaluated."""

    method: Literal["none", "epsilon", "thompson"] = "epsilon"
    rate: float = Field(0.05, ge=0, le=1, description="epsilon: share of decisions picked at random")
    prior_strength: float = Field(20.0, gt=0, description="thompson: pseudo-contacts behind each P(convert)")


class Holdout(_Strict):
    """Control groups: users left uncontacted on purpose, stable per user for a period (serving/holdout.py)."""

    share: float = Field(0.0, ge=0, lt=1, description="universal hold-out: share of users kept out of every campaign, e.g. 0.05")
    campaigns: dict[str, float] = Field(default_factory=dict,
                                        description="campaign_id -> share of that campaign's users held out as its control")
    salt: str = Field("nextbest", min_length=1, max_length=64, description="changing it reshuffles who is held out")
    period_days: int = Field(90, ge=1, le=3660, description="a user stays in (or out of) a hold-out for this many days")

    @field_validator("campaigns")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: s for k, s in v.items() if not 0 <= s < 1}
        if bad:
            raise ValueError(f"hold-out shares must be in [0, 1), e.g. 0.05; got {bad}")
        return v


class OperatorConfig(_Strict):
    """Everything an operator may change without a deploy."""

    offers: list[Offer] = Field(min_length=1)
    channels: list[Channel] = Field(min_length=1)
    caps: Caps = Caps()
    triggers: list[Trigger] = Field(default_factory=list)
    exploration: Exploration = Exploration()
    holdout: Holdout = Holdout()
    churn_boost: float = Field(1.0, ge=0, description="retention offers' value x (1 + churn_boost x P(churn))")
    min_expected_value: float = Field(0.0, description="no action unless the best EV is above this")

    @model_validator(mode="after")
    def _references(self) -> OperatorConfig:
        problems = []
        for kind, ids in (("offer", [o.offer_id for o in self.offers]), ("channel", [c.channel for c in self.channels])):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                problems.append(f"{kind} ids must be unique, repeated: {', '.join(dupes)}")
        offers, channels = {o.offer_id for o in self.offers}, {c.channel for c in self.channels}
        for t in self.triggers:
            unknown = [o for o in t.offers if o not in offers]
            if unknown:
                problems.append(f"trigger {t.name!r} names unknown offer(s) {unknown}; known: {sorted(offers)}")
            unknown = [c for c in (t.channels or []) if c not in channels]
            if unknown:
                problems.append(f"trigger {t.name!r} names unknown channel(s) {unknown}; known: {sorted(channels)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def offer_ids(self) -> list[str]:
        return [o.offer_id for o in self.offers]

    def channel_names(self) -> list[str]:
        return [c.channel for c in self.channels]


class ConfigError(ValueError):
    """An operator config a marketer must fix; the message lists each problem with where it is."""


def _where(data: object, loc: tuple) -> str:
    """`offers[2] (winback)` rather than `offers.2`: name the item the marketer knows."""
    parts, node = [], data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            label = item.get("offer_id") or item.get("channel") or item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{key}]" + (f" ({label})" if label else ""))
            node = item
        else:
            parts.append(("." if parts else "") + str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _parse(data: object, source: str) -> OperatorConfig:
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors(include_url=False):
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "is not a setting here (check the spelling)"
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict | list) else ""
            lines.append(f"  - {_where(data, e['loc'])}: {msg}{got}")
        raise ConfigError(f"operator config {source} has {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def load_config(path: Path | None) -> OperatorConfig:
    """The operator config at `path` (YAML), or the built-in default when `path` is None."""
    if path is None:
        return default_config()
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"operator config {path} does not exist; unset NEXTBEST_OPERATOR_CONFIG to use the built-in default")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"operator config {path} is not valid YAML: {err}") from None
    return _parse(data, str(path))


class ConfigSource:
    """The current config; re-read when the file changes, keeping the last good one if the new one is wrong.

    A missing file is not a wrong one: `missing` is then set and the holder must not contact anyone (the
    config still returned, the last good one or the built-in placeholder at a cold start, only lets requests be
    validated). Falling back to another catalog silently would change consent rules and caps under the operator.
    """

    def __init__(self, path: Path | None, check_every_s: float = 1.0):
        self.path = Path(path) if path else None
        self.check_every_s = check_every_s
        self.error: str | None = None  # the last reload problem, shown on /readyz and in logs
        self.missing = False  # the configured file is gone: an error state, no contact until it is back
        self._config = default_config()  # replaced below; stands in only while `missing` at a cold start
        self._mtime = self._stat()
        if self.path is not None and self._mtime is None:
            self._set_missing()
        else:
            self._config = load_config(self.path)
        self._checked = 0.0
        self._lock = threading.Lock()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    def _set_missing(self) -> None:
        self.missing = True
        self.error = (f"operator config {self.path} does not exist: no contact until it is restored (the service "
                      "never falls back to another catalog)")

    def current(self, now_s: float) -> OperatorConfig:
        """The config in force; checks the file's modification time at most every `check_every_s` seconds."""
        if self.path is not None and now_s - self._checked >= self.check_every_s:
            with self._lock:
                self._checked = now_s
                mtime = self._stat()
                if mtime != self._mtime:
                    self.reload()
        return self._config

    def reload(self) -> OperatorConfig:
        """Re-read the file now; on error keep the last good config and remember why."""
        self._mtime = self._stat()
        if self.path is not None and self._mtime is None:
            self._set_missing()
            return self._config
        try:
            self._config = load_config(self.path)
            self.error, self.missing = None, False
        except ConfigError as err:
            self.error = str(err)
        return self._config


def default_config() -> OperatorConfig:
    """The built-in config for a home without its own (see Settings.operator_yaml): a generic catalog of 12
    offers on 5 channels, caps and the two standard triggers (cart abandonment, registration)."""
    categories = {"electronics": 45.0, "fashion": 30.0, "home": 35.0, "beauty": 25.0, "grocery": 15.0, "books": 20.0}
    offers = [
        Offer(offer_id="welcome_gift", name="New-user gift", kind="coupon", category="any", value=8.0,
              eligibility="lifecycle_stage in [first_contact, lead]", priority=2),
        Offer(offer_id="payment_reminder", name="Complete your order", kind="product", category="any", value=30.0,
              eligibility="cart_open == 1", priority=3),
        Offer(offer_id="winback_coupon", name="We miss you: 20% off", kind="retention", category="any", value=18.0,
              eligibility="days_since_last_event >= 14"),
        Offer(offer_id="loyalty_bonus", name="Double points this week", kind="retention", category="any", value=12.0,
              eligibility="value_tier in [mid, high]"),
        Offer(offer_id="free_shipping", name="Free shipping", kind="coupon", category="any", value=10.0),
        Offer(offer_id="vip_preview", name="VIP early access", kind="product", category="any", value=40.0,
              eligibility="value_tier in [high]"),
        *[Offer(offer_id=f"new_{c}", name=f"New in {c}", kind="product", category=c, value=v) for c, v in categories.items()],
    ]
    channels = [
        Channel(channel="push", cost=0.001, quiet_hours="22-8"),
        Channel(channel="sms", cost=0.05, quiet_hours="21-9", daily_capacity=50_000),
        Channel(channel="email", cost=0.002, quiet_hours="23-7"),
        # In-app messages show inside the app the user opened: no marketing consent, no quiet hours.
        Channel(channel="inapp", cost=0.0, requires_consent=False),
        Channel(channel="wechat", cost=0.01, quiet_hours="22-8"),
    ]
    triggers = [
        Trigger(name="cart_abandonment", on="add_to_cart", unless="purchase", wait_minutes=10, deadline_minutes=180,
                offers=["payment_reminder"], channels=["push", "inapp", "email", "wechat"]),
        Trigger(name="registration", on="register", deadline_minutes=1440, offers=["welcome_gift"]),
    ]
    return OperatorConfig(offers=offers, channels=channels, triggers=triggers)


def _cell(value: object) -> object:
    """A table cell as a config value: None for missing (NaN, NaT, <NA>), plain Python otherwise."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


_TALLY = ["sent", "opted_out", "revenue", "users", "first_sent", "last_sent"]


def contact_tally(contacts: pd.DataFrame | None) -> pd.DataFrame:
    """Per channel of a contact log, what the log-taught channel rules read: contacts sent, those that ended in an
    unsubscribe or a complaint, their revenue, users reached, first and last send. The logs of disjoint sets of users
    (a world simulated in chunks) tally to the sum of their tallies (`add_tallies`)."""
    if contacts is None or contacts.empty or "channel" not in contacts:
        return pd.DataFrame(columns=_TALLY)
    sent = contacts[contacts["channel"].notna()]
    channel = sent["channel"].astype(str)
    hit = pd.Series(False, index=sent.index)
    for col in ("unsubscribed_at", "complained_at"):
        if col in sent:
            hit |= sent[col].notna()
    out = hit.groupby(channel).agg(["count", "sum"]).set_axis(["sent", "opted_out"], axis=1)
    out["revenue"] = sent["revenue"].fillna(0.0).groupby(channel).sum() if "revenue" in sent else np.nan
    out["users"] = sent["user_id"].groupby(channel).nunique() if "user_id" in sent else np.nan
    if "sent_at" in sent:
        at = pd.to_datetime(sent["sent_at"], utc=True).groupby(channel)
        out["first_sent"], out["last_sent"] = at.min(), at.max()
    else:
        out["first_sent"] = out["last_sent"] = pd.NaT
    return out


def add_tallies(tallies: list[pd.DataFrame]) -> pd.DataFrame:
    """The tally of the union of logs of disjoint sets of users, from theirs."""
    both = pd.concat([t for t in tallies if not t.empty])
    if both.empty:
        return pd.DataFrame(columns=_TALLY)
    by = both.groupby(level=0)
    out = by[["sent", "opted_out", "users"]].sum()
    out["revenue"] = by["revenue"].sum(min_count=1)
    out["first_sent"], out["last_sent"] = by["first_sent"].min(), by["last_sent"].max()
    return out[_TALLY]


def observed_opt_out_rates(contacts: pd.DataFrame | None, prior: float = 0.003, strength: float = 200.0,
                           tally: pd.DataFrame | None = None) -> dict[str, float]:
    """Per channel, the share of its contacts that ended in an unsubscribe or a complaint, smoothed towards `prior`
    with `strength` pseudo-contacts: the `opt_out_rate` a contact log teaches (or the log's `contact_tally`)."""
    tally = contact_tally(contacts) if tally is None else tally
    return {str(c): float((r["opted_out"] + prior * strength) / (r["sent"] + strength)) for c, r in tally.iterrows()}


CHANNEL_VALUE_DAYS = 90  # horizon of a channel's future value to one user (what an opt-out loses)


def observed_channel_values(contacts: pd.DataFrame | None, horizon_days: int = CHANNEL_VALUE_DAYS,
                            tally: pd.DataFrame | None = None) -> dict[str, float]:
    """Per channel, the revenue its contacts brought per user it reached, over `horizon_days` (the log's revenue over
    its span, scaled): what losing the channel to one user's unsubscribe or complaint costs, the `opt_out_cost` a
    contact log teaches (or the log's `contact_tally`). Logged revenue includes purchases the contact did not cause,
    so it leans towards protecting the channel."""
    tally = contact_tally(contacts) if tally is None else tally
    if tally.empty or tally["revenue"].isna().all():
        return {}
    span_days = max((tally["last_sent"].max() - tally["first_sent"].min()) / pd.Timedelta(days=1), 1.0)
    value = tally["revenue"] / tally["users"] * horizon_days / span_days
    return {str(c): round(float(v), 2) for c, v in value.items() if np.isfinite(v)}


def catalog_config(offers: pd.DataFrame, channels: pd.DataFrame, base: OperatorConfig | None = None,
                   contacts: pd.DataFrame | None = None, tally: pd.DataFrame | None = None) -> OperatorConfig:
    """An operator config whose catalog is a company's offers and channels tables (in their order); with its
    `contacts`, each channel's `opt_out_rate` is the one the log shows (`observed_opt_out_rates`), and its
    `opt_out_cost`, unless `base` sets one, the channel's value per user the log shows (`observed_channel_values`).

    Caps, exploration and triggers come from `base` (default: the built-in config). A trigger keeps the
    offers it names that the catalog has; naming none, it chooses among the catalog's coupons (a nudge to
    come back), and without coupons it is dropped. `tally` (`contact_tally`) may stand for `contacts`.
    """
    base = base or default_config()
    rows = [{k: _cell(v) for k, v in r.items()} for r in offers.to_dict("records")]
    catalog = [Offer(offer_id=str(r["offer_id"]), name=str(r.get("name") or ""), kind=str(r.get("kind") or "product"),
                     category=str(r["category"]), value=float(r["value"]), eligibility=r.get("eligibility"),
                     valid_from=r.get("valid_from"), valid_to=r.get("valid_to"), priority=int(r.get("priority") or 0))
               for r in rows]
    chans = [{k: _cell(v) for k, v in r.items()} for r in channels.to_dict("records")]
    kept = {c.channel: c for c in base.channels}  # the operator's long-term costs of a channel stay with it
    tally = contact_tally(contacts) if tally is None else tally
    learned = observed_opt_out_rates(None, tally=tally)  # a log given: each channel's opt-out rate as it teaches it
    values = observed_channel_values(None, tally=tally)  # ... and what an opt-out on it loses

    def long_term(name: str) -> dict:
        out = {"opt_out_cost": kept[name].opt_out_cost, "opt_out_rate": kept[name].opt_out_rate} if name in kept else {}
        if name in values and not out.get("opt_out_cost"):
            out["opt_out_cost"] = values[name]
        return out | ({"opt_out_rate": learned[name]} if name in learned else {})

    lanes = [Channel(channel=str(r["channel"]), cost=float(r["cost"]), quiet_hours=r.get("quiet_hours"),
                     daily_capacity=None if r.get("daily_capacity") is None else int(r["daily_capacity"]),
                     requires_consent=bool(r.get("requires_consent", True)), **long_term(str(r["channel"])))
             for r in chans]
    ids, names = {o.offer_id for o in catalog}, {c.channel for c in lanes}
    coupons = [o.offer_id for o in catalog if o.kind == "coupon"]
    triggers = []
    for t in base.triggers:
        kept = [o for o in t.offers if o in ids] or coupons
        if kept:
            lanes_kept = [c for c in t.channels if c in names] if t.channels else None
            triggers.append(t.model_copy(update={"offers": kept, "channels": lanes_kept or None}))
    return OperatorConfig(offers=catalog, channels=lanes, caps=base.caps, triggers=triggers, exploration=base.exploration, holdout=base.holdout,
                          churn_boost=base.churn_boost, min_expected_value=base.min_expected_value)


def ingested_catalog(raw_dir: Path, learn: bool = True) -> OperatorConfig | None:
    """`catalog_config` of the ingested offers and channels tables (with `learn`, channel rules taught by the
    ingested contact log; without, the catalog alone, the log not read), or None when either table is missing or
    empty."""
    from nextbest.features.ingest import raw_path

    paths = {t: raw_path(raw_dir, t) for t in ("offers", "channels", "contacts")}
    if paths["offers"] is None or paths["channels"] is None:
        return None
    offers, channels = pd.read_parquet(paths["offers"]), pd.read_parquet(paths["channels"])
    if offers.empty or channels.empty:
        return None
    contacts = None
    if learn and paths["contacts"] is not None:  # only the columns the channel rules read: a big log stays on disk
        import pyarrow.parquet as pq

        present = set(pq.ParquetFile(paths["contacts"]).schema_arrow.names)
        wanted = ["channel", "user_id", "sent_at", "revenue", "unsubscribed_at", "complained_at"]
        contacts = pd.read_parquet(paths["contacts"], columns=[c for c in wanted if c in present])
    return catalog_config(offers, channels, tally=contact_tally(contacts))


def write_config(config: OperatorConfig, path: Path, note: str = "") -> Path:
    """Write `config` as operator YAML (what `load_config` reads back), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text((f"# {note}\n" if note else "") + text)
    tmp.replace(path)
    return path
