"""`nextbest score`: batch decisions for every user, the same engine and rules as /decide_batch, nothing charged."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.features.store import read_table
from nextbest.pipelines.cli import app
from nextbest.pipelines.score import ScoreConfig, score
from nextbest.serving.runtime import Runtime
from nextbest.serving.schemas import BatchDecideRequest, CampaignContext
from tests.conftest import copy_home

NOW = datetime(2026, 9, 30, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def server_clock(monkeypatch):
    """The server clock stands at NOW, the time these decisions are asked for (serving/clock.py)."""
    monkeypatch.setattr("nextbest.serving.clock.system_clock", lambda: NOW)


@pytest.fixture
def home(trained, tmp_path) -> Settings:
    return copy_home(trained, tmp_path / "home")


def test_score_agrees_with_decide_batch_for_the_same_users_and_time(home, tmp_path):
    ids = read_table(home, "profile")["user_id"].astype(str).tolist()[:600]
    out = tmp_path / "scores.parquet"
    summary = score(home, ScoreConfig(out=out, user_ids=tuple(ids), now=NOW, chunk=300),
                    runtime=Runtime(home, rng=np.random.default_rng(5)))
    assert summary["scored"] == len(ids) and summary["degraded"] == 0
    rows = pd.read_parquet(out)
    assert set(rows["user_id"]) == set(ids)

    online = Runtime(home, rng=np.random.default_rng(5))
    batch = [d for start in range(0, len(ids), 300) for d in online.decide_batch(
        BatchDecideRequest(user_ids=ids[start:start + 300], now=NOW, dry_run=True, context=CampaignContext(campaign_id="batch")))]
    want = pd.DataFrame([{"user_id": d["user_id"], "offer_id": a["offer_id"] if a else None, "channel": a["channel"] if a else None,
                          "expected_value": a["expected_value"] if a else None}
                         for d in batch for a in (d["actions"] or [None])])
    got = rows[["user_id", "offer_id", "channel", "expected_value"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)
    assert rows["offer_id"].notna().sum() > 0 and rows["offer_id"].isna().sum() > 0  # some contacted, some not

    meta = pq.read_schema(out).metadata
    assert b"nextbest.model_versions" in meta and b"conversion" in meta[b"nextbest.model_versions"]


def test_score_charges_nothing_and_logs_nothing(home, tmp_path):
    ids = read_table(home, "profile")["user_id"].astype(str).tolist()[:200]
    rt = Runtime(home)
    before = rt.ledger.read(ids)
    score(home, ScoreConfig(out=tmp_path / "s.parquet", user_ids=tuple(ids), now=NOW), runtime=rt)
    assert rt.ledger.read(ids) == before
    assert not (home.log_dir / "decisions.jsonl").exists() or (home.log_dir / "decisions.jsonl").read_text() == ""


def test_a_segment_rule_scores_only_its_users(home, tmp_path):
    tags = read_table(home, "tags")
    newest = tags[tags["event_timestamp"] == tags["event_timestamp"].max()]
    stage = newest["lifecycle_stage"].mode().iloc[0]
    out = tmp_path / "segment.parquet"
    summary = score(home, ScoreConfig(out=out, where=f"lifecycle_stage in [{stage}]", now=NOW))
    expected = set(newest.loc[newest["lifecycle_stage"] == stage, "user_id"].astype(str))
    assert set(pd.read_parquet(out)["user_id"]) == expected
    assert 0 < summary["scored"] < len(newest)


def test_cli_scores_and_explains_caller_mistakes(home, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(read_table(home, "profile")["user_id"].astype(str).head(20)))
    ok = runner.invoke(app, ["score", "--users", str(ids), "--out", str(tmp_path / "o.parquet"), "--now", "2026-09-30T09:30:00"])
    assert ok.exit_code == 0, ok.output
    assert "users per second" in ok.output and len(pd.read_parquet(tmp_path / "o.parquet")["user_id"].unique()) == 20
    bad = runner.invoke(app, ["score", "--channel", "carrier-pigeon"])
    assert bad.exit_code == 2 and "carrier-pigeon" in bad.output and "Traceback" not in bad.output
    rule = runner.invoke(app, ["score", "--where", "lifecycle_stage is customer"])
    assert rule.exit_code == 2 and "--where" in rule.output


def test_a_per_user_model_is_scored_on_the_features_as_of_the_date(home, tmp_path):
    from nextbest.pipelines.score import score_model

    snapshots = sorted(read_table(home, "behaviour")["event_timestamp"].unique())
    late, early = pd.Timestamp(snapshots[-1]) + pd.Timedelta(hours=1), pd.Timestamp(snapshots[-4]) + pd.Timedelta(hours=1)
    first = score_model(home, "churn", late.to_pydatetime(), out=tmp_path / "late.parquet")
    score_model(home, "churn", late.to_pydatetime(), out=tmp_path / "again.csv")
    before = score_model(home, "churn", early.to_pydatetime(), out=tmp_path / "early.parquet")
    a, b = pd.read_parquet(tmp_path / "late.parquet"), pd.read_csv(tmp_path / "again.csv", dtype={"user_id": str})
    c = pd.read_parquet(tmp_path / "early.parquet")
    assert first["users"] == len(read_table(home, "profile")) == len(a)
    assert a["score"].between(0, 1).all() and a["score"].std() > 0
    np.testing.assert_allclose(a["score"], b["score"])  # the same date, the same answer
    moved = (a.set_index("user_id")["score"] - c.set_index("user_id")["score"]).abs()
    assert (moved > 1e-9).mean() > 0.5 and "version" in before["model"]  # older features, other scores


def test_cli_model_scoring_refuses_an_action_model_with_a_clear_message(home, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(home.home))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    ok = runner.invoke(app, ["score", "--model", "churn", "--out", str(tmp_path / "churn.csv")])
    assert ok.exit_code == 0, ok.output
    assert len(pd.read_csv(tmp_path / "churn.csv")) == len(read_table(home, "profile"))
    bad = runner.invoke(app, ["score", "--model", "conversion"])
    assert bad.exit_code == 2 and "scores an action" in bad.output and "Traceback" not in bad.output
    unknown = runner.invoke(app, ["score", "--model", "astrology"])
    assert unknown.exit_code == 2 and "unknown model" in unknown.output


def test_send_times_are_written_as_utc_instants():
    """A send time in the user's own offset is stored as the same instant in UTC, not as its local wall clock."""
    import pyarrow as pa

    from nextbest.pipelines.score import SCHEMA, _rows

    action = {"offer_id": "o1", "channel": "push", "expected_value": 1.0, "p_convert": 0.1, "uplift": None,
              "explored": False, "propensity": 1.0, "send_at": "2026-10-01T08:00:00+08:00"}
    decision = {"user_id": "u1", "decision_id": "d1", "actions": [action], "no_action_propensity": None, "filtered": [],
                "degraded_reasons": []}
    table = pa.table(_rows([decision]), schema=SCHEMA)
    assert table.column("send_at").to_pylist()[0] == datetime(2026, 10, 1, 0, 0, tzinfo=UTC)


def test_a_model_is_scored_on_features_that_exist_not_past_their_ttl(home, tmp_path, monkeypatch):
    """An export's newest snapshot lies weeks before today: scored "now", every user would get the score of missing
    features (the README's label path gave 2,000 users one score, std 0.003). Without --as-of the newest snapshot is
    scored, and said so; an explicit date with no snapshot within the features' TTL before it is refused."""
    from nextbest.pipelines import score as scoring
    from nextbest.serving.runtime import UserError

    newest = pd.Timestamp(read_table(home, "behaviour")["event_timestamp"].max())

    class Later(datetime):  # "today", 60 days after the export's newest snapshot
        @classmethod
        def now(cls, tz=None):
            return (newest + pd.Timedelta(days=60)).to_pydatetime()

    monkeypatch.setattr(scoring, "datetime", Later)
    default = scoring.score_model(home, "churn", out=tmp_path / "default.parquet")
    at = scoring.score_model(home, "churn", newest.to_pydatetime(), out=tmp_path / "at.parquet")
    got, want = pd.read_parquet(tmp_path / "default.parquet"), pd.read_parquet(tmp_path / "at.parquet")
    assert pd.Timestamp(default["as of"]) == newest and "60 d past" in default["note"] and "note" not in at
    np.testing.assert_allclose(got["score"], want["score"])
    assert got["score"].std() > 0.01  # scores that tell users apart
    with pytest.raises(UserError, match=f"--as-of {newest.date()}"):
        scoring.score_model(home, "churn", (newest + pd.Timedelta(days=45)).to_pydatetime(), out=tmp_path / "late.csv")
    assert not (tmp_path / "late.csv").exists()
