"""Feature tables and the Feast store: point-in-time correctness, online/offline parity, Redis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.build import BuildConfig, build_all, snapshot_times
from nextbest.features.feature_services import MODEL_VIEWS, service_name
from nextbest.features.settings import Settings
from nextbest.features.store import feature_store, foreign_sources, newest_rows, read_table, training_store
from tests.conftest import build_store, make_raw


def test_snapshots_are_midnights_ending_after_the_last_event(raw_frames):
    snaps = snapshot_times(raw_frames["events"], BuildConfig(snapshot_every_days=7))
    assert (snaps == snaps.floor("D")).all()
    assert snaps[-1] == raw_frames["events"]["ts"].max().floor("D") + pd.Timedelta(days=1)
    assert (np.diff(snaps.asi8) == 7 * 86400 * 10**9).all()


def test_planted_future_events_never_leak(raw_frames, tmp_path):
    """Events and outcomes at or after a snapshot's time must not show in features as of that time."""
    frames = dict(raw_frames)
    snap = snapshot_times(raw_frames["events"], BuildConfig())[-3]  # a snapshot in the middle of the history
    who = "u0001"
    planted = pd.DataFrame({
        "user_id": [who, who, who], "ts": [snap, snap + pd.Timedelta(hours=5), snap + pd.Timedelta(days=3)],
        "type": ["purchase"] * 3, "category": ["books"] * 3, "amount": [1e6] * 3,
    })
    frames["events"] = pd.concat([raw_frames["events"], planted], ignore_index=True)
    contact = pd.DataFrame({"contact_id": ["planted"], "user_id": [who], "sent_at": [snap - pd.Timedelta(days=1)],
                            "campaign_id": ["x"], "offer_id": ["o1"], "channel": ["sms"], "variant": ["treatment"],
                            "propensity": [0.5], "opened_at": [snap]})  # opened exactly at the snapshot: not yet known
    frames["contacts"] = pd.concat([raw_frames["contacts"][raw_frames["contacts"]["user_id"] != who], contact], ignore_index=True)
    assert snap in snapshot_times(frames["events"], BuildConfig())
    settings = Settings(home=tmp_path / "home")
    build_store(settings, frames, tmp_path / "csv")

    store = feature_store(settings)
    times = [snap, snap + pd.Timedelta(hours=12), snap + pd.Timedelta(days=3, hours=1)]
    entity = pd.DataFrame({"user_id": [who] * 3, "event_timestamp": times})
    hist = store.get_historical_features(entity_df=entity, features=store.get_feature_service(service_name("conversion"))).to_df()
    hist = hist.sort_values("event_timestamp").reset_index(drop=True)
    # Every requested time sees only events strictly before it: the planted 1e6 purchases never appear.
    assert (hist["revenue_all"] < 1e6).all()
    assert (hist["revenue_90d"] < 1e6).all()
    assert (hist["sent_90d_sms"] == 1).all()  # the contact was sent before the snapshot ...
    assert hist["open_rate_sms"].tolist() == pytest.approx([(0 + 0.5) / (1 + 5)] * 3)  # ... its open came after

    # The same value computed by brute force from the raw events strictly before the snapshot.
    ev = frames["events"]
    mine = ev[(ev["user_id"] == who) & (ev["type"] == "purchase") & (ev["ts"] < snap)]
    assert hist["revenue_all"].tolist() == pytest.approx([mine["amount"].sum()] * 3)


def test_every_user_column_becomes_a_profile_feature(raw_frames, tmp_path):
    frames = dict(raw_frames)
    frames["users"] = raw_frames["users"].assign(loyalty_points=np.arange(len(raw_frames["users"])) * 10,
                                                 favourite_store="north")
    settings = Settings(home=tmp_path / "home")
    build_store(settings, frames, tmp_path / "csv")
    store = feature_store(settings)
    profile = {f.name: str(f.dtype) for f in store.get_feature_view("profile").features}
    assert profile["loyalty_points"] == "Int64" and profile["favourite_store"] == "String"
    online = store.get_online_features(features=["profile:loyalty_points"], entity_rows=[{"user_id": "u0007"}]).to_dict()
    assert online["loyalty_points"] == [70]


def test_feature_services_are_the_feature_lists(built):
    store = feature_store(built)
    for model, views in MODEL_VIEWS.items():
        service = store.get_feature_service(service_name(model))
        assert [p.name for p in service.feature_view_projections] == list(views)
    names = {f.name for p in store.get_feature_service("decision_v1").feature_view_projections for f in p.features}
    for expected in ("events_7d", "recency_days", "aff_books", "open_rate_email", "contacts_7d", "open_share_h08",
                     "lifecycle_stage", "rfm_segment", "value_tier", "behaviour_cluster", "scorecard", "cart_open",
                     "consent_sms", "age"):
        assert expected in names
    # The past sends and opens per send-hour bin: read by the send-time model (and served), no other model's input.
    sends = {f"{k}_h{b:02d}_365d" for k in ("sends", "opens") for b in range(0, 24, 3)}
    for model in MODEL_VIEWS:
        got = {f.name for p in store.get_feature_service(service_name(model)).feature_view_projections for f in p.features}
        assert (sends <= got) if model in ("send_time", "decision") else not (sends & got), model
        if "time_profile" in MODEL_VIEWS[model]:
            assert "open_share_h08" in got and "rhythm_events_365d" in got, model


def _online_vs_offline(settings: Settings, ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = feature_store(settings)
    service = store.get_feature_service("decision_v1")
    online = pd.DataFrame(store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in ids]).to_dict())
    as_of = read_table(settings, "behaviour")["event_timestamp"].max()
    entity = pd.DataFrame({"user_id": ids, "event_timestamp": as_of})
    offline = store.get_historical_features(entity_df=entity, features=service).to_df()
    offline = offline.set_index("user_id").loc[ids].reset_index()
    return online.set_index("user_id"), offline.set_index("user_id")[online.columns.drop("user_id")]


def test_online_equals_offline_for_same_user_and_time(built):
    ids = [f"u{i:04d}" for i in range(0, 200, 7)]
    online, offline = _online_vs_offline(built, ids)
    assert online.shape[1] > 100
    for col in online.columns:
        a, b = online[col].to_numpy(), offline[col].to_numpy()
        if online[col].dtype == object or offline[col].dtype == object:
            assert list(map(str, a)) == list(map(str, b)), col
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9, err_msg=col)


def test_tags_follow_the_funnel(built):
    tags = read_table(built, "tags")
    beh = read_table(built, "behaviour").set_index(["user_id", "event_timestamp"])
    t = tags.set_index(["user_id", "event_timestamp"])
    customers = beh["purchases_all"] > 0
    assert (t.loc[customers, "lifecycle_stage"] == "customer").all()
    assert (t.loc[~customers, "lifecycle_stage"] != "customer").all()
    assert (t.loc[~customers, "rfm_segment"] == "prospect").all()
    assert set(t["value_tier"]) <= {"none", "low", "mid", "high"}
    # the scorecard rewards purchases: buyers in the last 30 days outscore the inactive on average
    active = beh["purchases_30d"] > 0
    assert t.loc[active, "scorecard"].mean() > t.loc[~active, "scorecard"].mean()


def test_affinity_and_daily_rhythm_match_a_brute_force_count(built):
    """Affinity: smoothed lifetime category shares; rhythm: the smoothed share of activity per local hour."""
    frames = make_raw()
    ev, users = frames["events"], frames["users"].set_index("user_id")
    beh, rhythm = read_table(built, "behaviour"), read_table(built, "time_profile")
    snap = beh["event_timestamp"].max()
    who = ev["user_id"].value_counts().index[0]
    mine = ev[(ev["user_id"] == who) & (ev["ts"] < snap)]
    row = beh[(beh["user_id"] == who) & (beh["event_timestamp"] == snap)].iloc[0]
    counts = mine[mine["category"].notna()]["category"].value_counts().reindex(["books", "toys", "home"], fill_value=0)
    expected = (counts + 0.35) / (counts.sum() + 3 * 0.35)
    assert [row[f"aff_{c}"] for c in counts.index] == pytest.approx(expected.tolist())

    local = mine["ts"].dt.tz_convert(users.loc[who, "timezone"]).dt.hour
    hourly = np.bincount(local, minlength=24).astype(float)
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / 2.0) ** 2)
    smooth = np.array([sum(hourly[k] * kernel[(h - k) % 24] for k in range(24)) for h in range(24)])
    got = rhythm[(rhythm["user_id"] == who) & (rhythm["event_timestamp"] == snap)].iloc[0]
    assert [got[f"open_share_h{h:02d}"] for h in range(24)] == pytest.approx((smooth / smooth.sum()).tolist())
    assert got["peak_open_hour"] == int(smooth.argmax()) and got["rhythm_events_365d"] == len(mine)


def test_the_daily_rhythm_leaves_out_the_events_a_contact_click_caused():
    """Events in the day after one of the user's own contact clicks are the campaign's, at the sender's hour: the
    rhythm counts the others (the click's instant excluded, 24 h after it included again); another user's click,
    an open without a click and a control row without a channel exclude nothing; `caused_hours=0` keeps them all."""
    from nextbest.features.build import BuildConfig

    hour = pd.Timedelta(hours=1)
    click = pd.Timestamp("2026-03-10 14:00", tz="UTC")
    users = pd.DataFrame({"user_id": ["a", "b"], "signup_at": pd.Timestamp("2026-01-01", tz="UTC"), "timezone": "UTC"})
    own = [pd.Timestamp(f"2026-03-0{d} 08:10", tz="UTC") for d in range(1, 6)]  # the user's own mornings
    caused = [click, click + 3 * hour, click + 23 * hour]  # the click's view, a purchase, its cart next day
    ev = pd.DataFrame([("a", t) for t in [*own, *caused, click - hour, click + 24 * hour]] + [("b", t) for t in caused],
                      columns=["user_id", "ts"]).assign(type="view", category=None, amount=np.nan)
    contacts = pd.DataFrame({"contact_id": ["c1", "c2", "c3", "c4"], "user_id": ["a", "b", "b", "a"],
                             "sent_at": [click - hour, click - 2 * hour, click - hour, click - 5 * hour],
                             "channel": ["email", "email", "push", None],
                             "opened_at": [click - hour / 2, click - hour, click - hour / 2, pd.NaT],
                             "clicked_at": [click, pd.NaT, pd.NaT, click - 4 * hour]})
    contacts.loc[3, "opened_at"] = pd.NaT
    raw = {"users": users, "events": ev, "contacts": contacts}

    def newest(config):
        t = build_all(raw, config)["time_profile"]
        return t[t["event_timestamp"] == t["event_timestamp"].max()].set_index("user_id")

    left, kept = newest(BuildConfig()), newest(BuildConfig(caused_hours=0))
    # a: the five mornings, the event an hour before the click and the one 24 h after it; not the three in between
    assert left.loc["a", "rhythm_events_365d"] == 7 and kept.loc["a", "rhythm_events_365d"] == 10
    assert left.loc["b", "rhythm_events_365d"] == kept.loc["b", "rhythm_events_365d"] == 3  # b opened, never clicked
    hourly = np.bincount([t.hour for t in [*own, click - hour, click + 24 * hour]], minlength=24).astype(float)
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / 2.0) ** 2)
    smooth = np.array([sum(hourly[k] * kernel[(h - k) % 24] for k in range(24)) for h in range(24)])
    got = left.loc["a", [f"open_share_h{h:02d}" for h in range(24)]].to_numpy(dtype=float)
    assert got == pytest.approx(smooth / smooth.sum())
    assert left.loc["a", "peak_open_hour"] == 8


def test_the_time_profile_counts_past_sends_and_opens_by_bin_of_local_send_hour():
    """`sends_hXX_365d` / `opens_hXX_365d`: a user's sends in the year before the snapshot and those of them opened,
    per 3-hour bin of the send's local hour (the user's offset on the sent day, across a DST switch); each counts on
    its own day (an open the day after its send counts from the snapshot after that day), a control row (no channel)
    is no send, and a user with contacts but no events has counts and no rhythm."""
    from nextbest.features.build import SEND_HOUR_BINS

    hour = pd.Timedelta(hours=1)
    users = pd.DataFrame({"user_id": ["a", "b"], "signup_at": pd.Timestamp("2026-01-01", tz="UTC"),
                          "timezone": ["Europe/Berlin", "UTC"]})
    ev = pd.DataFrame({"user_id": ["a", "a"], "ts": [pd.Timestamp("2026-03-02 08:00", tz="UTC"),
                                                     pd.Timestamp("2026-04-02 08:00", tz="UTC")]})
    ev = ev.assign(type="app_open", category=None, amount=np.nan)
    berlin = pd.Timestamp("2026-03-29 01:00", tz="UTC")  # Berlin's switch to summer time: +1 h before, +2 h after
    sent = [pd.Timestamp("2026-03-10 07:30", tz="UTC"),  # a: 08:30 local -> bin 06, opened the same day
            pd.Timestamp("2026-03-12 21:30", tz="UTC"),  # a: 22:30 local -> bin 21, opened the next day (UTC)
            berlin - hour,  # a: 01:00 local (winter) -> bin 00, not opened
            berlin + hour,  # a: 04:00 local (summer) -> bin 03, not opened
            pd.Timestamp("2026-03-12 12:00", tz="UTC"),  # a: control row, no channel: not a send
            pd.Timestamp("2026-03-20 17:00", tz="UTC")]  # b (UTC): bin 15, opened
    opened = [sent[0] + hour / 2, sent[1] + 3 * hour, pd.NaT, pd.NaT, pd.NaT, sent[5] + hour]
    contacts = pd.DataFrame({"contact_id": [f"c{i}" for i in range(6)], "user_id": ["a"] * 5 + ["b"],
                             "sent_at": sent, "channel": ["email", "push", "email", "sms", None, "email"],
                             "opened_at": opened})
    t = build_all({"users": users, "events": ev, "contacts": contacts})["time_profile"].set_index(["user_id", "event_timestamp"])
    bins = [f"h{b:02d}" for b in SEND_HOUR_BINS]
    assert bins == ["h00", "h03", "h06", "h09", "h12", "h15", "h18", "h21"]

    def counts(user, snap):
        row = t.loc[(user, pd.Timestamp(snap))]
        return ({b: row[f"sends_{b}_365d"] for b in bins if row[f"sends_{b}_365d"]},
                {b: row[f"opens_{b}_365d"] for b in bins if row[f"opens_{b}_365d"]})

    newest = t.index.get_level_values("event_timestamp").max()
    assert counts("a", newest) == ({"h00": 1, "h03": 1, "h06": 1, "h21": 1}, {"h06": 1, "h21": 1})
    assert counts("b", newest) == ({"h15": 1}, {"h15": 1})
    assert t.loc[("b", newest), "rhythm_events_365d"] == 0 and t.loc[("b", newest), "peak_open_hour"] == -1
    # The snapshot of midnight 13 March sees both sends and the open of the 10th, not the open of the 13th.
    assert counts("a", "2026-03-13 00:00+00:00") == ({"h06": 1, "h21": 1}, {"h06": 1})


def test_repeat_purchase_features_match_a_brute_force_count(built):
    """Purchase days, customer age, first-to-last span and inter-purchase gaps, from purchases before the snapshot;
    the same numbers BG/NBD's summary (x, t_x, T) is made of (training.validation.repeat_purchase_stats)."""
    from nextbest.training.validation import repeat_purchase_stats

    ev = make_raw()["events"]
    beh = read_table(built, "behaviour")
    snap = beh["event_timestamp"].max()
    buys = ev[(ev["type"] == "purchase") & (ev["ts"] < snap)]
    days = buys.assign(day=buys["ts"].dt.floor("D")).drop_duplicates(["user_id", "day"])
    counts = days["user_id"].value_counts()
    who = counts.index[counts >= 3][0]
    mine = np.sort(days.loc[days["user_id"] == who, "day"].to_numpy())
    row = beh[(beh["user_id"].astype(str) == str(who)) & (beh["event_timestamp"] == snap)].iloc[0]
    gaps = np.diff(mine) / np.timedelta64(1, "D")
    first = pd.Timestamp(mine[0]).tz_localize("UTC") if pd.Timestamp(mine[0]).tzinfo is None else pd.Timestamp(mine[0])
    assert row["purchase_days_all"] == len(mine) and row["customer_age_days"] == (snap - first).days
    assert row["purchase_span_days"] == gaps.sum()
    assert row["ipt_mean_days"] == pytest.approx(gaps.mean()) and row["ipt_std_days"] == pytest.approx(gaps.std(ddof=1))
    summary = repeat_purchase_stats(pd.DataFrame({"user_id": [str(who)], "event_timestamp": [snap]}), ev).iloc[0]
    assert summary["x"] == len(mine) - 1 and summary["t_x"] * 7 == pytest.approx(gaps.sum())
    never = beh[(beh["event_timestamp"] == snap) & (beh["purchases_all"] == 0)].iloc[0]
    assert never["purchase_days_all"] == 0 and never["customer_age_days"] == 0 and np.isnan(never["ipt_mean_days"])


@pytest.mark.redis
def test_training_on_a_copied_home_reads_the_copys_tables_not_the_originals(built, tmp_path):
    """Feast keeps each source's absolute path: a copied home's registry names the original's tables until the copy
    re-registers them, which `training_store` does on the first read (the original's registry is left alone)."""
    import shutil

    copy = Settings(home=tmp_path / "copy")
    shutil.copytree(built.home, copy.home)
    assert foreign_sources(copy, feature_store(copy)), "the copy's registry should name the original's files"
    store = training_store(copy)
    paths = {v.name: v.batch_source.path for v in store.list_feature_views()}
    assert paths and all(str(copy.feature_dir.resolve()) in p for p in paths.values()), paths
    assert not foreign_sources(copy, feature_store(copy))
    assert not foreign_sources(built, feature_store(built))  # the original still reads its own tables


def test_redis_online_store_serves_the_same_values(built, redis_url, tmp_path):
    """The Redis online store, selected by config, against a real redis-server."""
    settings = Settings(home=tmp_path / "home", online_store="redis", redis_url=redis_url)
    build_store(settings, make_raw(), tmp_path / "csv")
    ids = ["u0003", "u0010", "u0150"]
    on_redis, _ = _online_vs_offline(settings, ids)
    on_sqlite, _ = _online_vs_offline(built, ids)
    pd.testing.assert_frame_equal(on_redis.sort_index(axis=1), on_sqlite.sort_index(axis=1), check_dtype=False)
    import redis

    host, port = redis_url.split(":")
    assert redis.Redis(host=host, port=int(port)).dbsize() >= len(ids)  # the values really live in Redis


def test_bulk_writer_matches_feasts_own_write(built, tmp_path, monkeypatch):
    """The SQLite bulk path writes exactly what Feast's write_to_online_store writes; a load takes each view's newest
    rows in batches of at most `LOAD_BATCH` users (Feast's writer here in batches of 64, the bulk one in one batch
    of 200: the same store)."""
    import shutil

    from feast import FeatureStore

    from nextbest.features import store as store_module
    from nextbest.features.store import apply, materialize

    other = Settings(home=tmp_path / "home")
    shutil.copytree(built.home, other.home)
    (other.feast_dir / "online.db").unlink()
    apply(other)  # recreates the empty online tables
    batches: dict[str, list[int]] = {}
    feasts_write = FeatureStore.write_to_online_store

    def recorded(self, name, df, *args, **kwargs):
        batches.setdefault(name, []).append(len(df))
        return feasts_write(self, name, df, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_to_online_store", recorded)
    monkeypatch.setattr(store_module, "LOAD_BATCH", 64)
    users = materialize(other, method="feast-write")
    assert users["behaviour"] == sum(batches["behaviour"]) == 200 and max(map(max, batches.values())) <= 64
    assert len(batches["behaviour"]) >= 4
    ids = [f"u{i:04d}" for i in range(0, 200, 3)]
    feast_written, _ = _online_vs_offline(other, ids)
    bulk_written, _ = _online_vs_offline(built, ids)
    pd.testing.assert_frame_equal(feast_written, bulk_written)
    # The stored event time too: the newest snapshot, in whole seconds (a microsecond column once read as
    # nanoseconds gave 1970 dates).
    stamps = {s: _event_times(s, ids) for s in (other, built)}
    assert stamps[other] == stamps[built]
    newest = newest_rows(built, "behaviour", pd.Timestamp.now(tz="UTC")).set_index("user_id")["event_timestamp"]
    assert stamps[built]["behaviour"] == [int(newest[u].timestamp()) for u in ids]


def _event_times(settings: Settings, ids: list[str]) -> dict[str, list]:
    """Per view, the event time Feast reads back online for each of `ids` (one feature of the view stands for it)."""
    store = feature_store(settings)
    out = {}
    for view in store.list_feature_views():
        got = store.get_online_features(features=[f"{view.name}:{view.features[0].name}"],
                                        entity_rows=[{"user_id": u} for u in ids]).to_dict(include_event_timestamps=True)
        out[view.name] = got[f"{view.features[0].name}__ts"]
    return out


def test_windows_hold_the_days_before_the_snapshot_edges_included():
    """A snapshot's n-day window holds the n whole UTC days before it: an event at the first instant of the
    earliest such day counts, one a second earlier does not, and one at the snapshot itself waits for the next."""
    t0 = pd.Timestamp("2026-06-10", tz="UTC")  # the newest snapshot: the midnight after the last event
    second, day = pd.Timedelta(seconds=1), pd.Timedelta(days=1)
    ts = [t0 - second, t0 - 7 * day, t0 - 7 * day - second, t0 - 30 * day, t0 - 30 * day - second]
    raw = {"users": pd.DataFrame({"user_id": ["u1"], "signup_at": [t0 - 100 * day], "timezone": ["UTC"]}),
           "events": pd.DataFrame({"user_id": ["u1"] * len(ts), "ts": ts, "type": ["view"] * len(ts),
                                   "category": ["books"] * len(ts), "amount": [np.nan] * len(ts)})}
    beh = build_all(raw)["behaviour"].set_index("event_timestamp")
    windows = ["events_1d", "events_7d", "events_30d", "events_90d"]
    assert beh.loc[t0, windows].tolist() == [1, 2, 4, 5]
    # A week earlier: the event at that snapshot's own instant is not yet known.
    assert beh.loc[t0 - 7 * day, windows].tolist() == [1, 1, 3, 3]
    assert beh.loc[t0 - 7 * day, "days_since_last_event"] == 1


def test_a_build_in_slices_of_users_equals_the_build_in_one_pass(raw_frames, monkeypatch):
    """DuckDB builds every per-user table, the tags and real-time seeds too, a slice of users at a time past
    `users_per_pass`: the same tables. The tags are ranked and clustered over every user of a snapshot: RFM scores are
    each buyer's mean-rank quintile among all buyers of the snapshot, and the clusters are fitted on every n-th row
    per snapshot by user id (a sample smaller than the table here) and assigned to the nearest centre, as a brute
    force in pandas computes them."""
    from nextbest.features import build
    from nextbest.features.tags import cluster_centres

    monkeypatch.setattr(build, "_KMEANS_SAMPLE", 300)  # 200 users x ~17 snapshots: every ~12th row is fitted
    config = BuildConfig(users_per_pass=45)
    whole = build_all(raw_frames)
    sliced = build_all(raw_frames, config)  # 200 users: 5 slices
    for name, table in whole.items():
        pd.testing.assert_frame_equal(sliced[name], table, check_exact=False, rtol=1e-9, obj=name)

    tags, beh = sliced["tags"], sliced["behaviour"]

    beh = beh.sort_values(["event_timestamp", "user_id"]).reset_index(drop=True)
    t = tags.set_index(["event_timestamp", "user_id"]).loc[list(zip(beh["event_timestamp"], beh["user_id"], strict=True))]
    buyers = beh["purchases_all"] > 0
    for score, value in [("r_score", -beh["recency_days"]), ("f_score", beh["purchases_90d"]),
                         ("m_score", beh["revenue_90d"].round(6))]:
        pct = value[buyers].groupby(beh.loc[buyers, "event_timestamp"]).rank(method="average")
        pct = pct / buyers[buyers].groupby(beh.loc[buyers, "event_timestamp"]).transform("size")
        expected = np.where(buyers, np.clip(np.ceil(pct.reindex(beh.index).fillna(0) * 5), 1, 5), 1)
        assert t[score].to_numpy().tolist() == expected.astype(int).tolist(), score

    stride = -(-len(beh) // 300)
    assert stride > 1
    sample = beh[beh.groupby("event_timestamp").cumcount() % stride == 0]
    snap_s = (beh["event_timestamp"].astype("int64") // 10**(9 if beh["event_timestamp"].dt.unit == "ns" else 6)).to_numpy()
    x = np.log1p(beh[list(build._CLUSTER_COLS)].to_numpy(dtype="float64").clip(min=0))
    fits = cluster_centres(x[sample.index], snap_s[sample.index], config.clusters, config.seed)
    expected = np.empty(len(beh), dtype=int)
    for snap, mu, sd, centres in fits:
        rows = snap_s == snap
        expected[rows] = ((((x[rows] - mu) / sd)[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    assert len(set(expected)) > 2
    assert t["behaviour_cluster"].to_numpy().tolist() == expected.tolist()


def test_the_daily_rhythm_reads_local_hours_across_a_dst_switch():
    """The time profile's local hour comes from each user's UTC offset on the event's day, switching at the exact
    instant of a DST change (Berlin and New York in March 2026) and for half-hour zones (Kolkata): the same hours
    as converting every event with pandas."""
    second, hour = pd.Timedelta(seconds=1), pd.Timedelta(hours=1)
    berlin, new_york = pd.Timestamp("2026-03-29 01:00", tz="UTC"), pd.Timestamp("2026-03-08 07:00", tz="UTC")
    events = {"b": [berlin - second, berlin, berlin + 5 * hour], "n": [new_york - second, new_york, new_york - 7 * hour],
              "k": [pd.Timestamp("2026-03-20 00:45", tz="UTC"), pd.Timestamp("2026-03-20 18:29:59", tz="UTC")]}
    zones = {"b": "Europe/Berlin", "n": "America/New_York", "k": "Asia/Kolkata"}
    users = pd.DataFrame({"user_id": list(zones), "signup_at": pd.Timestamp("2026-01-01", tz="UTC"),
                          "timezone": list(zones.values())})
    ev = pd.DataFrame([(u, t) for u, ts in events.items() for t in ts], columns=["user_id", "ts"])
    ev = ev.assign(type="app_open", category=None, amount=np.nan)
    rhythm = build_all({"users": users, "events": ev})["time_profile"]
    newest = rhythm[rhythm["event_timestamp"] == rhythm["event_timestamp"].max()].set_index("user_id")
    gap = np.minimum(np.arange(24), 24 - np.arange(24))
    kernel = np.exp(-0.5 * (gap / 2.0) ** 2)
    for user, zone in zones.items():
        local = pd.Series(events[user]).dt.tz_convert(zone).dt.hour
        hourly = np.bincount(local, minlength=24).astype(float)
        smooth = np.array([sum(hourly[k] * kernel[(h - k) % 24] for k in range(24)) for h in range(24)])
        got = newest.loc[user, [f"open_share_h{h:02d}" for h in range(24)]].to_numpy(dtype=float)
        assert got == pytest.approx(smooth / smooth.sum()), (user, local.tolist())
    assert pd.Series(events["b"]).dt.tz_convert("Europe/Berlin").dt.hour.tolist() == [1, 3, 8]  # the switch is in it
