"""The simulated world: planted truths hold, the log matches its logging policy, and it is reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.features.contract import TABLES, conform
from nextbest.simulation import CATEGORIES, CHANNELS, Oracle, Truth, WorldConfig, draw_outcomes, simulate

CONFIG = WorldConfig(n_users=3_000, days=60, seed=11)


@pytest.fixture(scope="module")
def world():
    return simulate(CONFIG)


def test_tables_follow_the_contract(world):
    for name, df in world.tables.items():
        assert name in TABLES
        conform(name, df, f"{name}.parquet")  # raises ContractError on any broken rule
    c = world.tables["contacts"]
    assert c["contact_id"].is_unique
    for col in ("sent_at", "delivered_at", "opened_at", "converted_at", "complained_at"):
        assert str(c[col].dtype) == "datetime64[ns, UTC]"
    assert set(world.tables["events"]["type"].unique()) == {"register", "app_open", "view", "search", "add_to_cart",
                                                            "purchase"}


def test_high_interest_users_buy_more_of_that_category(world):
    ev = world.tables["events"]
    buys = ev[ev["type"] == "purchase"]
    user_idx = buys["user_id"].cat.codes.to_numpy()
    for k, cat in enumerate(CATEGORIES[:4]):
        interest = world.truth.interest[:, k]
        top, bottom = interest >= np.quantile(interest, 0.75), interest <= np.quantile(interest, 0.25)
        in_cat = (buys["category"] == cat).to_numpy()
        counts = np.bincount(user_idx[in_cat], minlength=CONFIG.n_users)
        assert counts[top].mean() > 4 * counts[bottom].mean(), cat


def test_control_converts_less_than_contacted(world):
    c = world.tables["contacts"]
    rate = c.groupby("variant", observed=True)["converted_at"].apply(lambda s: s.notna().mean())
    assert rate["treatment"] > 1.3 * rate["control"]
    assert 0.01 < rate["control"] < rate["treatment"] < 0.15
    # A control row is a hold-out: nothing was sent.
    ctrl = c[c["variant"] == "control"]
    assert ctrl[["offer_id", "channel", "delivered_at", "opened_at", "clicked_at"]].isna().all().all()


def test_fatigue_lowers_response(world):
    oracle = world.oracle()
    users = np.arange(CONFIG.n_users)
    at = CONFIG.start_ts + pd.Timedelta(days=3)
    fresh = oracle.p_open(users, np.full(len(users), "email"), np.full(len(users), 19.0), recent_contacts=0, at=at)
    tired = oracle.p_open(users, np.full(len(users), "email"), np.full(len(users), 19.0), recent_contacts=3, at=at)
    assert (tired <= fresh).all() and tired.mean() < 0.85 * fresh.mean()
    up_fresh = oracle.uplift(users, np.full(len(users), "off_books"), np.full(len(users), "push"), at, 0)
    up_tired = oracle.uplift(users, np.full(len(users), "off_books"), np.full(len(users), "push"), at, 4)
    assert up_tired.mean() < 0.8 * up_fresh.mean()


def test_fatigue_shows_in_the_log(world):
    """Contacts that follow many recent contacts are opened less: a feature store can learn it."""
    t = world.tables["contacts"]
    t = t[t["variant"] == "treatment"].sort_values("sent_at")
    key = t["user_id"].cat.codes.to_numpy().astype(np.int64) * 2**32 + t["sent_at"].astype("int64").to_numpy() // 10**9
    order = np.argsort(key, kind="stable")
    key = key[order]
    # Earlier contacts of the same user within 7 days: rows between the window start and this row.
    recent = np.arange(len(key)) - np.searchsorted(key, key - 7 * 86400, side="right")
    opened = t["opened_at"].notna().to_numpy()[order]
    assert opened[recent >= 2].mean() < 0.9 * opened[recent == 0].mean()


def test_complaints_and_unsubscribes_create_suppressions(world):
    c, s = world.tables["contacts"], world.tables["suppressions"]
    for col, reason in (("complained_at", "complaint"), ("unsubscribed_at", "opt_out")):
        hits = c[c[col].notna()]
        assert len(hits) > 0
        rows = s[s["reason"] == reason]
        merged = hits.merge(rows, on=["user_id", "channel"], how="left", indicator=True)
        assert (merged["_merge"] == "both").all()
        assert (merged["since"] == merged[col]).groupby(merged["contact_id"]).any().all()
    assert s["reason"].isin(["complaint", "opt_out", "regulator", "vip", "manual"]).all()
    assert (s.loc[s["reason"].isin(["regulator", "vip"]), "channel"] == "*").all()


def test_no_sends_to_suppressed_channels_after_the_fact(world):
    c, s = world.tables["contacts"], world.tables["suppressions"]
    t = c[c["variant"] == "treatment"]
    on_channel = t.merge(s[s["channel"] != "*"], on=["user_id", "channel"])
    assert (on_channel["sent_at"] < on_channel["since"]).all()
    star = t.merge(s[s["channel"] == "*"][["user_id", "since"]], on="user_id")
    assert (star["sent_at"] < star["since"]).all()


def test_propensities_match_the_logging_policy(world):
    c = world.tables["contacts"]
    users = world.tables["users"].set_index("user_id")
    assert ((c["propensity"] > 0) & (c["propensity"] <= 1)).all()
    control = c["variant"] == "control"
    assert abs(control.mean() - CONFIG.control_share) < 0.01
    assert np.allclose(c.loc[control, "propensity"], CONFIG.control_share)
    # Treated: (1 - control share) / (eligible offers x consented channels), so at most (1 - share) / 1.
    treated = c.loc[~control]
    assert (treated["propensity"] <= 1 - CONFIG.control_share + 1e-12).all()
    n_channels = users.loc[treated["user_id"].astype(str), [f"consent_{ch}" for ch in CHANNELS]].sum(axis=1).to_numpy()
    n_offers = (1 - CONFIG.control_share) / treated["propensity"].to_numpy() / n_channels
    # Suppressions only ever remove channels, so n_offers computed with consent alone is a lower bound.
    assert (n_offers <= 12 + 1e-9).all() and np.median(n_offers) >= 1
    # Channels are drawn only among consented ones and sends fall within 8..21 local time.
    consented = users.loc[treated["user_id"].astype(str)].reset_index()
    assert all(consented.loc[(treated["channel"] == ch).to_numpy(), f"consent_{ch}"].all() for ch in CHANNELS)
    local = [ts.tz_convert(tz).hour for ts, tz in zip(treated["sent_at"].head(500),
                                                       users.loc[treated["user_id"].head(500).astype(str), "timezone"], strict=True)]
    assert 8 <= min(local) and max(local) <= 21


def test_nothing_happens_after_the_period(world):
    end = CONFIG.end_ts
    assert world.tables["events"]["ts"].max() < end
    c = world.tables["contacts"]
    for col in ("sent_at", "delivered_at", "opened_at", "clicked_at", "converted_at", "unsubscribed_at", "complained_at"):
        assert c[col].max() < end
    assert (c["sent_at"] >= CONFIG.start_ts).all()


def test_treated_conversions_appear_as_purchases(world):
    c = world.tables["contacts"]
    conv = c[c["converted_at"].notna()][["user_id", "converted_at", "revenue"]]
    buys = world.tables["events"].query("type == 'purchase'")[["user_id", "ts", "amount"]]
    merged = conv.merge(buys, left_on=["user_id", "converted_at"], right_on=["user_id", "ts"], how="left")
    assert merged["ts"].notna().all()
    assert np.allclose(merged["revenue"], merged["amount"])
    assert (c.loc[c["converted_at"].isna(), "revenue"] == 0).all()


def test_funnel_stages_are_all_present(world):
    ev = world.tables["events"]
    rank = {"register": 1, "app_open": 1, "view": 2, "search": 2, "add_to_cart": 3, "purchase": 4}
    deepest = ev["type"].astype(str).map(rank).groupby(ev["user_id"], observed=False).max().fillna(0)
    shares = deepest.value_counts(normalize=True)
    assert all(shares.get(k, 0) > 0.03 for k in range(5))
    per_user = len(ev) / CONFIG.n_users
    assert 10 < per_user < 40  # 60 days here: about half of the 120-day 25..35


def test_oracle_uplift_is_positive_and_convert_dominates_organic(world):
    oracle = world.oracle()
    rng = np.random.default_rng(0)
    n = 5_000
    users = rng.integers(0, CONFIG.n_users, n)
    offers = rng.choice(world.tables["offers"]["offer_id"].to_numpy(), n)
    channels = rng.choice(np.array(CHANNELS), n)
    at = CONFIG.start_ts + pd.to_timedelta(rng.integers(0, 50 * 24, n), unit="h")
    p_convert = oracle.p_convert(users, offers, channels, at)
    p_organic = oracle.p_organic(users, at)
    assert (p_convert >= p_organic).all()
    assert oracle.uplift(users, offers, channels, at).mean() > 0.005
    # Uplift and organic propensity rank users differently (sure things vs persuadables).
    assert np.corrcoef(p_organic, p_convert - p_organic)[0, 1] < 0.3


def test_send_hour_near_the_users_rhythm_opens_more(world):
    oracle = world.oracle()
    users = np.arange(CONFIG.n_users)
    peak = world.truth.preferred_hour
    ch = np.full(len(users), "push")
    near = oracle.p_open(users, ch, peak)
    far = oracle.p_open(users, ch, (peak + 12) % 24)
    assert (near > far).mean() > 0.99


def test_draw_outcomes_replays_a_policy(world):
    offers = world.tables["offers"]
    n = 20_000
    actions = pd.DataFrame({"user_idx": np.arange(n) % CONFIG.n_users, "offer_id": "cpn_10pct", "channel": "inapp",
                            "send_at": CONFIG.end_ts + pd.Timedelta(days=1, hours=2)})
    a = draw_outcomes(world.truth, offers, actions, np.zeros(n), np.random.default_rng(1))
    b = draw_outcomes(world.truth, offers, actions, np.zeros(n), np.random.default_rng(1))
    pd.testing.assert_frame_equal(a, b)
    expected = world.oracle().p_convert(actions["user_idx"], actions["offer_id"], actions["channel"],
                                        actions["send_at"]).mean()
    assert abs(a["converted_at"].notna().mean() - expected) < 0.01
    assert (a["opened_at"].notna() <= a["delivered_at"].notna()).all()


def test_same_seed_same_world_other_seed_other_world():
    small = WorldConfig(n_users=400, days=30, seed=3)
    a, b = simulate(small), simulate(small)
    c = simulate(WorldConfig(n_users=400, days=30, seed=4))
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    assert not a.tables["events"].equals(c.tables["events"])
    assert not a.tables["contacts"]["sent_at"].equals(c.tables["contacts"]["sent_at"])


def test_save_and_load_round_trip(world, tmp_path):
    world.save(tmp_path / "raw", tmp_path / "truth")
    for name, df in world.tables.items():
        back = pd.read_parquet(tmp_path / "raw" / f"{name}.parquet")
        assert list(back.columns) == list(df.columns)
        assert back["user_id" if "user_id" in back else back.columns[0]].astype(str).tolist() == \
            df["user_id" if "user_id" in df else df.columns[0]].astype(str).tolist()
    assert not list((tmp_path / "truth").glob("*.pkl"))
    truth = Truth.load(tmp_path / "truth")
    assert np.array_equal(truth.interest, world.truth.interest) and truth.end_ns == world.truth.end_ns
    users = np.arange(50)
    at = CONFIG.start_ts
    assert np.allclose(Oracle(truth, world.tables["offers"]).p_organic(users, at), world.oracle().p_organic(users, at))


def test_interest_posterior_is_the_dirichlet_posterior_mean_of_the_categorised_events():
    from nextbest.simulation.beliefs import interest_posterior
    from nextbest.simulation.truth import INTEREST_CONCENTRATION as a

    before = pd.Timestamp("2026-03-01", tz="UTC")
    at = lambda day: pd.Timestamp(f"2026-02-{day:02d} 12:00", tz="UTC")  # noqa: E731
    events = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u1", "u1", "u1", "u2"],
        "ts": [at(1), at(2), at(3), at(4), at(5), pd.Timestamp("2026-03-02", tz="UTC"), at(1)],
        "type": ["view", "add_to_cart", "view", "purchase", "app_open", "view", "search"],
        "category": ["books", "books", "books", "toys", None, "toys", None],
    })
    post = interest_posterior(events, np.array(["u1", "u2", "u3"]), before)
    k = len(CATEGORIES)
    books, toys = CATEGORIES.index("books"), CATEGORIES.index("toys")
    # u1: 3 books and 1 toys before the period (the app open has no category, the later view is not history)
    assert post[0, books] == pytest.approx((3 + a) / (4 + a * k))
    assert post[0, toys] == pytest.approx((1 + a) / (4 + a * k))
    np.testing.assert_allclose(post[1:], 1 / k)  # no categorised events: the prior mean
    np.testing.assert_allclose(post.sum(axis=1), 1.0)


def test_channel_response_posterior_follows_the_opens_and_keeps_the_prior_without_sends(world):
    from nextbest.simulation.beliefs import channel_response_posterior

    before = pd.Timestamp(world.truth.end_ns, tz="UTC")
    sent = [before - pd.Timedelta(days=3 * k + 1) for k in range(8)]
    later = before + pd.Timedelta(hours=1)
    rows = []
    for user, opened in (("a", True), ("b", False)):
        rows += [{"user_id": user, "channel": "email", "sent_at": t, "delivered_at": t + pd.Timedelta(minutes=1),
                  "opened_at": t + pd.Timedelta(hours=1) if opened else pd.NaT} for t in sent]
    # a send after `before` is not history; a send never delivered says nothing of opening
    rows.append({"user_id": "b", "channel": "sms", "sent_at": later, "delivered_at": later, "opened_at": later})
    rows.append({"user_id": "c", "channel": "push", "sent_at": sent[0], "delivered_at": pd.NaT, "opened_at": pd.NaT})
    contacts = pd.DataFrame(rows)
    idx = np.array([0, 1, 2])
    truth = Truth(**{**{f: getattr(world.truth, f) for f in ("start_ns", "end_ns")},
                     **{f: getattr(world.truth, f)[idx] for f in Truth.__dataclass_fields__ if f not in ("start_ns", "end_ns")}})
    post = channel_response_posterior(truth, contacts, np.array(["a", "b", "c"]), before)
    email = CHANNELS.index("email")
    # eight opens of eight move the belief far up; eight unopened sends less far down (most sends go unopened)
    assert post[0, email] > 1.0 and post[1, email] < -0.1
    others = np.ones_like(post, dtype=bool)
    others[[0, 1], email] = False
    np.testing.assert_allclose(post[others], 0.0, atol=1e-9)  # the prior's mean where nothing was observed


def test_the_history_oracle_knows_less_than_the_oracle_and_more_than_nothing(world):
    from nextbest.simulation.beliefs import history_beliefs
    from nextbest.simulation.policies import OraclePolicy, RandomPolicy
    from nextbest.simulation.replay import Period, ReplayConfig, replay

    period = Period.from_tables(world.tables, world.truth)
    beliefs = history_beliefs(period.truth, world.tables, period.user_ids, period.start)
    # the beliefs track the hidden traits without being them
    for trait in ("interest", "channel_response"):
        est, true = getattr(beliefs, trait).ravel(), getattr(world.truth, trait).ravel()
        assert 0.2 < np.corrcoef(est, true)[0, 1] < 0.95
    config = ReplayConfig(days=7)
    results = {p.name: replay(period, p, config).metrics for p in
               (OraclePolicy(period), OraclePolicy(period, name="history oracle", beliefs=beliefs), RandomPolicy())}
    assert all(m["violations"] == 0 for m in results.values())
    revenue = {name: m["incremental_revenue"] for name, m in results.items()}
    assert revenue["random"] < revenue["history oracle"] < 0.95 * revenue["oracle"]


def test_the_smallest_world_the_cli_allows_simulates_and_conforms():
    """10 users (the CLI's minimum) may have nobody buying before a campaign: no purchase to look up, no crash."""
    for seed in range(3):
        world = simulate(WorldConfig(n_users=10, days=30, seed=seed))
        assert world.tables["users"]["user_id"].nunique() == 10
        for table in TABLES:
            if table in world.tables:
                conform(table, world.tables[table], f"{table}.csv")


def test_expected_opt_outs_are_the_rates_the_draws_follow(world):
    from nextbest.simulation import response

    rng = np.random.default_rng(3)
    n = 200_000
    u = rng.integers(0, CONFIG.n_users, n)
    c = rng.integers(0, len(CHANNELS), n)
    recent = rng.integers(0, 6, n)
    send = np.full(n, world.truth.end_ns, dtype=np.int64)
    o = np.zeros(n, dtype=np.int64)
    out, _ = response.draw_outcomes_ns(world.truth, world.tables["offers"], u, o, c, send, recent, rng)
    for col, p in (("unsubscribed_at", response.p_unsubscribe(world.truth, u, c, recent)),
                   ("complained_at", response.p_complaint(world.truth, u, c, recent))):
        drawn = (out[col] != np.iinfo(np.int64).min).sum()
        # the sum of the probabilities is the drawn count's mean: within 4 binomial standard deviations
        assert abs(drawn - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()) + 1
    # pressure: the same users and channels opt out more after more recent contacts
    assert (response.p_unsubscribe(world.truth, u, c, recent + 3) > response.p_unsubscribe(world.truth, u, c, recent)).all()


def test_the_replay_reports_expected_opt_outs_not_drawn_ones(world):
    from nextbest.simulation.policies import RandomPolicy
    from nextbest.simulation.replay import Period, ReplayConfig, replay

    period = Period.from_tables(world.tables, world.truth)
    runs = [replay(period, RandomPolicy(share=1.0), ReplayConfig(days=2, seed=seed)) for seed in (1, 2)]
    for r in runs:
        m, s = r.metrics, r.sends
        assert m["unsubscribes"] == pytest.approx(s["p_unsubscribe"].sum())
        assert m["complaints"] == pytest.approx(s["p_complaint"].sum())
        assert m["unsubscribes_drawn"] == int(s["unsubscribed"].sum())
        assert m["opt_outs_per_1k"] == pytest.approx(1000 * (m["unsubscribes"] + m["complaints"]) / m["contacts"])
        assert ((0 < s["p_unsubscribe"]) & (s["p_unsubscribe"] < 1)).all()
    # two seeds of the same policy: the expected rate moves far less than the drawn one can
    a, b = (r.metrics for r in runs)
    assert abs(a["unsubscribes_per_1k"] - b["unsubscribes_per_1k"]) < 0.1 * a["unsubscribes_per_1k"]


def test_the_replay_keeps_to_the_spacing_rule_and_counts_a_send_that_breaks_it(world):
    import dataclasses

    from nextbest.simulation.policies import RandomPolicy
    from nextbest.simulation.replay import Period, ReplayConfig, Rules, replay

    period = Period.from_tables(world.tables, world.truth).sample(1000, seed=1)
    # Weekly caps loose enough that only the spacing rule (default: no contact after 2 in the last 168 hours) binds.
    rules = Rules(per_user_per_week=7, per_user_channel_per_week=7)
    kept = replay(period, RandomPolicy(share=1.0), ReplayConfig(days=8, rules=rules))
    assert kept.metrics["violations"] == 0
    for _, hours in (kept.sends["send_at"].astype("int64") // 3_600_000_000_000).groupby(kept.sends["user_idx"]):
        b = np.sort(hours.to_numpy())
        assert (b[2:] - b[:-2] >= rules.spacing_hours).all()  # any 3 of a user's contacts span 168 hours or more

    @dataclasses.dataclass(frozen=True)
    class Unspaced:  # sees the same situation but the spacing rule: the replay must flag what it then sends
        name: str = "unspaced"

        def choose(self, s, rng):
            return RandomPolicy(share=1.0).choose(dataclasses.replace(s, allowed=period.consent.copy()), rng)

    broke = replay(period, Unspaced(), ReplayConfig(days=8, rules=rules)).sends
    assert broke["broke_spacing"].sum() > 0 and kept.metrics["contacts"] < len(broke)


def _file_bytes(raw_dir) -> dict[str, bytes]:
    from pathlib import Path

    return {p.name: p.read_bytes() for p in sorted(Path(raw_dir).glob("*.parquet"))}


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: object for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)})


def test_a_world_of_one_chunk_is_the_one_stream_world(tmp_path):
    """Worlds up to a chunk (the demo's, the tests') must stay what they were before chunks: every table written
    byte for byte as the simulator without chunks wrote it (all users from the seed's own stream, one `write_raw`)."""
    from nextbest.features.ingest import manifest, write_raw
    from nextbest.simulation import CHUNK_USERS, write_world
    from nextbest.simulation.world import _simulate_chunk

    config = WorldConfig(n_users=400, days=30, seed=5)
    assert config.n_chunks == 1 and config.chunk_users == CHUNK_USERS >= 20_000  # the demo's 20,000 users: one chunk
    unchunked = _simulate_chunk(config, config.n_users, 0, 1, np.random.default_rng(config.seed), lambda s, d: None)
    write_raw(unchunked.tables, tmp_path / "unchunked")
    for chunk_users in (CHUNK_USERS, config.n_users):  # the default, and a chunk of exactly the world's size
        raw = tmp_path / f"chunk{chunk_users}"
        write_world(WorldConfig(n_users=400, days=30, seed=5, chunk_users=chunk_users), raw, tmp_path / "truth")
        assert _file_bytes(raw) == _file_bytes(tmp_path / "unchunked")
        assert manifest(raw)["snapshot_id"] == manifest(tmp_path / "unchunked")["snapshot_id"]
    assert np.array_equal(Truth.load(tmp_path / "truth").interest, unchunked.truth.interest)


def test_the_first_chunk_of_a_bigger_world_is_the_world_of_one_chunk():
    small = simulate(WorldConfig(n_users=250, days=30, seed=5, chunk_users=250))
    big = simulate(WorldConfig(n_users=600, days=30, seed=5, chunk_users=250))  # chunks of 250, 250, 100
    first = {u for u in small.tables["users"]["user_id"]}
    for name in ("users", "events", "contacts", "suppressions"):
        df = big.tables[name]
        head = df[df["user_id"].astype(str).isin(first)].reset_index(drop=True)
        want = small.tables[name]
        assert len(head) == len(want) and head.index.equals(pd.RangeIndex(len(want)))  # the first rows of the table
        for col in want.columns:
            assert head[col].astype(object).equals(want[col].astype(object)), (name, col)
    # ... and the other chunks are users of their own, not copies: their own streams
    assert big.truth.n_users == 600 and not np.array_equal(big.truth.interest[250:500], big.truth.interest[:250])
    assert not np.array_equal(big.truth.interest[500:], big.truth.interest[250:350])


def test_a_world_in_chunks_is_written_chunk_by_chunk_and_follows_the_contract(tmp_path):
    """A multi-chunk world written as it is simulated: unique ids, each user's history whole and in time order, the
    same tables and snapshot id as writing the whole world (`simulate`'s) at once, and ingest accepts it."""
    from pathlib import Path

    from nextbest.features.ingest import ingest, manifest, plan_from_dir, read_raw, write_raw
    from nextbest.serving.config import add_tallies, catalog_config, contact_tally
    from nextbest.simulation import write_world
    from nextbest.simulation.world import _concat_rows, concat_truths

    config = WorldConfig(n_users=700, days=30, seed=9, chunk_users=300)  # 300, 300, 100: the last chunk's ids are int8
    chunks = []
    rows = write_world(config, tmp_path / "raw", tmp_path / "truth", each=chunks.append)
    whole = {name: _concat_rows([c.tables[name] for c in chunks if name in c.tables]) for name in chunks[0].tables}
    write_raw(whole, tmp_path / "whole")
    tables = {name: read_raw(tmp_path / "raw", name) for name in TABLES if name in rows}
    for name, df in tables.items():
        assert len(df) == rows[name] == len(whole[name])
        # the same values; a categorical's unused categories may differ (a chunk without suppressions adds none)
        pd.testing.assert_frame_equal(_plain(df), _plain(read_raw(tmp_path / "whole", name)), obj=name)
    assert isinstance(tables["events"]["user_id"].dtype, pd.CategoricalDtype)  # ids stay cheap at millions of rows
    assert manifest(tmp_path / "raw")["snapshot_id"] == manifest(tmp_path / "whole")["snapshot_id"]

    users = tables["users"]["user_id"].astype(str)
    assert users.tolist() == [f"u{i:07d}" for i in range(1, 701)]
    contacts = tables["contacts"]
    assert contacts["contact_id"].astype(str).tolist() == [f"c{i:09d}" for i in range(1, len(contacts) + 1)]
    chunk_of = pd.Series(np.arange(700) // 300, index=users)
    for name in ("events", "contacts", "suppressions"):
        chunk = chunk_of.reindex(tables[name]["user_id"].astype(str)).to_numpy()
        assert not np.isnan(chunk).any()  # every row's user is a user of the world
        assert (np.diff(chunk) >= 0).all()  # rows in chunk order: each chunk's rows are one block
        assert name == "suppressions" or set(chunk) == {0, 1, 2}  # (the last chunk's 100 users suppressed nobody)
    ev = tables["events"]
    assert ev.groupby(ev["user_id"].astype(str), observed=True)["ts"].apply(lambda t: t.is_monotonic_increasing).all()
    assert Truth.load(tmp_path / "truth").n_users == 700
    assert np.array_equal(Truth.load(tmp_path / "truth").upgrade_ns, concat_truths([c.truth for c in chunks]).upgrade_ns)
    assert ingest(plan_from_dir(Path(tmp_path / "raw")), tmp_path / "ingested") == rows
    # `nextbest simulate`'s operator config from the chunks' contact tallies: what the whole log teaches
    offers, channels = whole["offers"], whole["channels"]
    by_chunk = catalog_config(offers, channels, tally=add_tallies([contact_tally(c.tables["contacts"]) for c in chunks]))
    at_once = catalog_config(offers, channels, contacts=whole["contacts"])
    for a, b in zip(by_chunk.channels, at_once.channels, strict=True):
        assert a.opt_out_rate == pytest.approx(b.opt_out_rate, rel=1e-12) and a.opt_out_cost == b.opt_out_cost


def test_truth_instants_are_nanoseconds_whatever_the_columns_resolution():
    from nextbest.simulation.truth import _ns

    at = pd.to_datetime(["2026-09-01 06:00", "2026-09-02 18:30"], utc=True)
    expected = at.as_unit("ns").asi8
    for column in (pd.Series(at.as_unit("s")), pd.Series(at.as_unit("ms")), at.as_unit("s"), at.tz_localize(None).as_unit("s")):
        assert (_ns(column) == expected).all()


def test_a_feature_build_engine_prints_no_progress_bar():
    import subprocess
    import sys

    # A plain interpreter, where DuckDB's own default is a bar on long queries (under pytest it is off already).
    probe = ("import duckdb; from nextbest.features.engines import DuckDBEngine; q = \"SELECT current_setting('enable_progress_bar')\"; "
             "print(duckdb.connect().execute(q).fetchone()[0], DuckDBEngine().con.execute(q).fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["True", "False"]  # DuckDB's default, and the engine's
