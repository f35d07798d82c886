"""Thornton (2008), a randomised field experiment shipped by the `causaldata` package, as a nextbest export.

Usage: python benchmarks/export_thornton.py OUT_DIR   (needs the `public-data` extra: pip install -e ".[public-data]")
then the data scientist's path, no other Python:
    nextbest ingest OUT_DIR && nextbest features build && nextbest features apply
    nextbest train uplift && nextbest evaluate --logs --users 0 && nextbest retrain

The experiment (Malawi, 2004; Thornton, "The Demand for, and Impact of, Learning HIV Status", AER 98(5)): people
tested for HIV at home were handed a voucher with a cash incentive drawn at random (none for about a quarter of
them, otherwise up to ~3 USD) to collect their result at a nearby centre. It has the shape of a marketing
experiment: randomised offers of different values, a no-offer control, one binary outcome, and covariates
known before the assignment (age, distance to the centre, village, the test result itself). Here:
- users: one per person in the experiment (`got` and `tinc` known), profile columns `age`, `distvct` (km to the
  centre), `hiv2004` (the test result, -1 where unknown), `village`; one channel, `inperson`, consented.
- offers: the incentive in three tiers, `inc_low` (< 1 USD), `inc_mid` (1-2), `inc_high` (>= 2); value = the
  tier's mean amount. No incentive is the control (`variant` control, no offer).
- contacts: one per person, all sent on the survey's first day at 10:00 local time; `propensity` = the share of
  people assigned to that arm (the amounts were drawn at random, so the arm's share is the assignment probability);
  `converted_at` = the send time plus one day where the result was collected (`got` = 1): the data has no dates, so
  the reward window (7 d by default) holds every collection; `observed_until` = 30 days after the send.
- events: one `register` event per person at the send time minus one day (the contract requires an event log;
  the experiment has no behaviour, so every behaviour feature is the same for everyone).
Dates are constants the data does not have (like a column mapping's constants); every value is the dataset's.
The data: causaldata (MIT licence) ships it; it is read from the installed package, never downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SENT_AT = pd.Timestamp("2004-06-01 08:00", tz="UTC")  # 10:00 in Malawi (UTC+2)
TIERS = (("inc_low", 0.0, 1.0), ("inc_mid", 1.0, 2.0), ("inc_high", 2.0, np.inf))  # USD, [low, high)


def thornton() -> pd.DataFrame:
    """The experiment's people: those with a known incentive and outcome."""
    # The package's own file, read without importing causaldata (its loaders import statsmodels: seconds).
    spec = importlib.util.find_spec("causaldata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('causaldata is not installed: pip install -e ".[public-data]"')
    data = pd.read_stata(Path(spec.submodule_search_locations[0]) / "thornton_hiv" / "thornton_hiv.dta")
    return data[data["got"].notna() & data["tinc"].notna()].reset_index(drop=True)


def tables(data: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The contract's tables (users, events, contacts, offers, channels) of the experiment."""
    ids = "p" + pd.Series(np.arange(1, len(data) + 1)).astype(str).str.zfill(4)
    arm = np.full(len(data), "control", dtype=object)
    for name, low, high in TIERS:
        arm[(data["tinc"] > 0).to_numpy() & (data["tinc"] >= low).to_numpy() & (data["tinc"] < high).to_numpy()] = name
    share = pd.Series(arm).value_counts(normalize=True)
    treated = arm != "control"
    users = pd.DataFrame({
        "user_id": ids, "signup_at": SENT_AT - pd.Timedelta(days=1), "timezone": "Africa/Blantyre",
        "consent_inperson": True, "age": data["age"].to_numpy(), "distvct": data["distvct"].round(4).to_numpy(),
        "hiv2004": data["hiv2004"].fillna(-1).astype(int).to_numpy(),
        "village": "v" + data["villnum"].fillna(0).astype(int).astype(str).to_numpy(),
    })
    events = pd.DataFrame({"user_id": ids, "ts": SENT_AT - pd.Timedelta(days=1), "type": "register"})
    got = data["got"].to_numpy() == 1
    contacts = pd.DataFrame({
        "contact_id": "c" + ids.str[1:], "user_id": ids, "sent_at": SENT_AT, "campaign_id": "thornton_2004",
        "offer_id": np.where(treated, arm, None), "channel": np.where(treated, "inperson", None),
        "variant": np.where(treated, "incentive", "control"), "propensity": share.reindex(arm).round(6).to_numpy(),
        "converted_at": pd.Series(np.where(got, SENT_AT + pd.Timedelta(days=1), pd.NaT)),
        "observed_until": SENT_AT + pd.Timedelta(days=30),
    })
    offers = pd.DataFrame([{"offer_id": name, "category": "incentive",
                            "value": round(float(data.loc[arm == name, "tinc"].mean()), 4)} for name, _, _ in TIERS])
    channels = pd.DataFrame({"channel": ["inperson"], "cost": [0.0]})
    return {"users": users, "events": events, "contacts": contacts, "offers": offers, "channels": channels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for users.csv, events.csv, contacts.csv, offers.csv, channels.csv")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in tables(thornton()).items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{name}: {len(frame):,} rows")


if __name__ == "__main__":
    main()
