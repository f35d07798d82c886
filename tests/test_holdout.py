"""Hold-outs: one rule (serving/holdout.py), stable per user for a period, and in the service a logged no-contact
decision with its probability."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from nextbest.serving.config import ConfigError, Holdout, default_config, load_config, write_config
from nextbest.serving.holdout import (
    UNIVERSAL,
    control_of,
    holdout_draw,
    in_holdout,
    period_of,
    share_not_held_out,
)
from nextbest.serving.runtime import Runtime
from nextbest.serving.schemas import BatchDecideRequest
from tests.conftest import copy_home
from tests.test_serving_runtime import NOW, champions

IDS = [f"user-{i}" for i in range(20_000)]


def test_the_share_held_out_is_the_configured_share_and_scopes_are_independent():
    universal = np.array([in_holdout(u, 0.05, "s", UNIVERSAL, 7) for u in IDS])
    campaign = np.array([in_holdout(u, 0.05, "s", "campaign:spring", 7) for u in IDS])
    assert abs(universal.mean() - 0.05) < 0.006 and abs(campaign.mean() - 0.05) < 0.006  # 3 sigma is 0.0046
    assert abs((universal & campaign).mean() - 0.05 * 0.05) < 0.002  # independent draws, not the same users
    assert not any(in_holdout(u, 0.0, "s", UNIVERSAL, 7) for u in IDS[:500])


def test_a_user_stays_for_the_period_and_a_new_period_or_salt_reshuffles():
    begin = pd.Timestamp("1970-01-01", tz="UTC").to_pydatetime() + timedelta(days=90 * 228)  # a period's first day
    assert period_of(begin, 90) == period_of(begin + timedelta(days=89, hours=23), 90) == 228
    assert period_of(begin + timedelta(days=90), 90) == 229
    draws = np.array([holdout_draw(u, "s", UNIVERSAL, 1) for u in IDS[:2000]])
    assert (draws == np.array([holdout_draw(u, "s", UNIVERSAL, 1) for u in IDS[:2000]])).all()
    assert np.corrcoef(draws, [holdout_draw(u, "s", UNIVERSAL, 2) for u in IDS[:2000]])[0, 1] < 0.1
    assert np.corrcoef(draws, [holdout_draw(u, "t", UNIVERSAL, 1) for u in IDS[:2000]])[0, 1] < 0.1


def test_control_of_names_the_scope_and_the_universal_hold_out_comes_first():
    h = Holdout(share=0.1, campaigns={"spring": 0.2}, salt="s", period_days=90)
    at = NOW
    scopes = [control_of(u, "spring", h, at) for u in IDS[:5000]]
    universal = [s for s in scopes if s and s[0] == UNIVERSAL]
    spring = [s for s in scopes if s and s[0] == "campaign:spring"]
    assert all(s == (UNIVERSAL, 0.1) for s in universal) and all(s == ("campaign:spring", 0.2) for s in spring)
    assert 0.08 < len(universal) / 5000 < 0.12 and 0.15 < len(spring) / 5000 < 0.21  # 0.2 of the other 90 %
    assert all(control_of(u, "other", h, at) in (None, (UNIVERSAL, 0.1)) for u in IDS[:2000])


def test_a_bad_share_is_a_config_error_that_names_it(tmp_path):
    path = tmp_path / "operator.yaml"
    write_config(default_config(), path)
    path.write_text(path.read_text() + "holdout:\n  campaigns:\n    spring: 1.5\n")
    with pytest.raises(ConfigError, match=r"holdout.campaigns.*\[0, 1\)"):
        load_config(path)


def test_the_service_logs_held_out_users_as_no_contact_decisions_with_their_probability(built, tmp_path):
    home = copy_home(built, tmp_path / "home")
    config = default_config().model_copy(update={"holdout": Holdout(share=0.1, campaigns={"spring": 0.3})})
    write_config(config, home.home / "operator.yaml")
    rt = Runtime(home, loader=lambda s: champions("email", "1"), clock=lambda: NOW + timedelta(hours=22))
    users = pd.read_parquet(home.feature_dir / "profile.parquet")["user_id"].astype(str).unique().tolist()
    answers = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW, context={"campaign_id": "spring"}))
    expected = {u: control_of(u, "spring", config.holdout, NOW) for u in users}
    held = [d for d in answers if d["holdout"]]
    assert {d["user_id"] for d in held} == {u for u, c in expected.items() if c}  # the one rule decides
    assert 0.25 < len(held) / len(users) < 0.5  # 0.1 + 0.9 x 0.3 = 0.37
    for d in held:
        assert d["actions"] == [] and d["holdout_share"] == expected[d["user_id"]][1]
        assert d["holdout"] == expected[d["user_id"]][0]
        # P(no contact): held out (1 - 0.9 x 0.7) or the policy's own "no action" (at most 1)
        assert 1 - 0.9 * 0.7 - 1e-12 <= d["no_action_propensity"] <= 1
    assert any(d["actions"] for d in answers if not d["holdout"])  # the others are decided as usual
    counts = rt.ledger.read([d["user_id"] for d in held]).user_counts
    assert not any(counts.get(d["user_id"]) for d in held)  # a control charges no cap
    logged = [json.loads(line) for line in (home.log_dir / "decisions.jsonl").read_text().splitlines()]
    controls = [r for r in logged if r["holdout"]]
    assert len(controls) == len(held) and all(r["actions"] == [] and r["holdout_share"] in (0.1, 0.3) for r in controls)
    # the next day (same period) holds out the same users; another campaign only the universal ones
    again = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW + timedelta(hours=20), context={"campaign_id": "spring"}))
    assert {d["user_id"] for d in again if d["holdout"]} == {d["user_id"] for d in held}
    other = rt.decide_batch(BatchDecideRequest(user_ids=users, now=NOW + timedelta(hours=21), context={"campaign_id": "x"}))
    assert {d["user_id"] for d in other if d["holdout"]} == {d["user_id"] for d in held if d["holdout"] == UNIVERSAL}
    # an action's probability includes the chance of having been held out: P(not held out) x P(the policy's pick)
    rate = config.exploration.rate
    assert share_not_held_out("spring", config.holdout) == pytest.approx(0.9 * 0.7)
    assert share_not_held_out("x", config.holdout) == share_not_held_out(None, config.holdout) == pytest.approx(0.9)
    for answers_, kept in ((answers, 0.63), (other, 0.9)):
        sent = [a for d in answers_ for a in d["actions"]]
        assert sent and all(0 < a["propensity"] <= kept + 1e-12 for a in sent)
        greedy = [a["propensity"] for a in sent if not a["explored"]]
        assert all(p >= kept * (1 - rate) - 1e-12 for p in greedy) and max(greedy) > 0.9 * kept


@pytest.mark.parametrize("greedy_none", [False, True])
def test_each_logged_choice_is_drawn_with_its_logged_probability(built, tmp_path, greedy_none):
    """One situation (one user's features under 4,000 user ids, nothing charged), hold-outs of 10 % and 20 %,
    exploration 0.3: every logged choice ("no contact" whether held out or picked, and each send) comes up as often as
    its logged propensity says, and those propensities sum to one. With `greedy_none` the policy's best choice is no
    action (a minimum EV nothing reaches), so "no contact" is mostly the policy's own choice, still one number."""
    from nextbest.serving.config import Exploration
    from nextbest.serving.schemas import CampaignContext

    home = copy_home(built, tmp_path / "home")
    config = default_config().model_copy(update={
        "holdout": Holdout(share=0.1, campaigns={"spring": 0.2}), "exploration": Exploration(method="epsilon", rate=0.3),
        "min_expected_value": 1e9 if greedy_none else 0.0})
    write_config(config, home.home / "operator.yaml")
    rt = Runtime(home, loader=lambda s: champions("email", "1"), clock=lambda: NOW + timedelta(hours=22))
    users = pd.read_parquet(home.feature_dir / "profile.parquet")["user_id"].astype(str).unique().tolist()
    feats, known, _ = rt.features.fetch(users[:1])
    n = 4_000
    ids = [f"twin-{i}" for i in range(n)]
    same = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in feats.items()}
    same["user_id"] = np.asarray(ids, dtype=object)
    answers = rt.score(ids, CampaignContext(campaign_id="spring"), NOW, features=(same, np.ones(n, dtype=bool), False))
    assert len(answers) == n
    logged: dict[tuple, list[float]] = {}
    for d in answers:
        a = d["actions"][0] if d["actions"] else None
        key = ("none",) if a is None else (a["offer_id"], a["channel"], a["send_at"])
        logged.setdefault(key, []).append(d["no_action_propensity"] if a is None else a["propensity"])
    assert len(logged) > 3 and ("none",) in logged  # exploration reached several sends; some decisions sent nothing
    held = sum(bool(d["holdout"]) for d in answers)
    assert 0.2 < held / n < 0.36  # 1 - 0.9 x 0.8 = 0.28 held out
    for key, ps in logged.items():
        assert max(ps) - min(ps) < 1e-12, f"{key}: one situation, one probability"
        p, count = ps[0], len(ps)
        assert abs(count - n * p) <= 4.5 * np.sqrt(n * p * (1 - p)) + 1, f"{key}: {count} of {n} drawn, logged p {p:.4f}"
    # the choices never drawn carry the rest; with exploration over every open arm, that is only the unexplored arms
    assert sum(ps[0] for ps in logged.values()) <= 1 + 1e-9
    # every decision logs the same P(no contact) and P(held out), whatever it chose (the judge's P(sent or held out))
    assert {round(d["no_action_propensity"], 12) for d in answers} == {round(logged[("none",)][0], 12)}
    assert {round(d["holdout_propensity"], 12) for d in answers} == {0.28}
    none = logged[("none",)][0]
    if greedy_none:  # held out, or not held out and the policy kept its "no action" (1 - 0.3 + 0.3 / k)
        assert none > 0.28 + 0.72 * 0.7
    else:
        assert 0.28 <= none < 0.28 + 0.72 * 0.3
