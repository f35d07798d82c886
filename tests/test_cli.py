"""The `nextbest` command line: exit codes, messages without tracebacks, real data end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.features.settings import Settings
from nextbest.pipelines.cli import app
from nextbest.simulation import WorldConfig
from tests.conftest import write_csvs

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "home"


def test_bad_input_exits_2_with_a_message_not_a_traceback(raw_frames, tmp_path, home):
    events = raw_frames["events"].astype({"ts": str})
    events.loc[:4, "ts"] = "not a date"
    result = runner.invoke(app, ["ingest", str(write_csvs({**raw_frames, "events": events}, tmp_path / "in"))])
    assert result.exit_code == 2
    assert "events.csv" in result.output and "'ts'" in result.output and "5 row(s)" in result.output
    assert "Traceback" not in result.output
    assert not (home / "raw").exists()


def test_commands_in_the_wrong_order_explain_what_to_run(home):
    result = runner.invoke(app, ["features", "build"])
    assert result.exit_code == 2
    assert "nextbest simulate" in result.output and "nextbest ingest" in result.output
    result = runner.invoke(app, ["ingest"])
    assert result.exit_code == 2 and "--mapping" in result.output
    # the loop runs through a decision service it would start: without a world it says so and starts none
    result = runner.invoke(app, ["loop", "--rounds", "1"])
    assert result.exit_code == 2 and "nextbest simulate" in result.output and "Traceback" not in result.output
    assert not (home / "ledger.db").exists() and not (home / "raw").exists()


def test_simulate_writes_the_worlds_catalog_and_forgets_the_old_worlds_contacts(home):
    from nextbest.serving.config import load_config

    (home / "logs").mkdir(parents=True)
    (home / "logs" / "decisions.jsonl").write_text('{"user_id": "old"}\n')
    (home / "ledger.db").write_bytes(b"contacts made to the old world's users")
    result = runner.invoke(app, ["simulate", "--users", "200", "--days", "14"])
    assert result.exit_code == 0, result.output
    assert not (home / "ledger.db").exists() and not (home / "logs" / "decisions.jsonl").exists()
    offers = pd.read_parquet(home / "raw" / "offers.parquet")
    config = load_config(Settings().operator_yaml)
    assert Settings().operator_yaml == home / "operator.yaml"
    assert config.offer_ids() == list(offers["offer_id"])
    # a history of any length ends where the default one does, in the past (so the online store has rows as of now)
    events = pd.to_datetime(pd.read_parquet(home / "raw" / "events.parquet")["ts"], utc=True)
    sent = pd.to_datetime(pd.read_parquet(home / "raw" / "contacts.parquet")["sent_at"], utc=True)
    end = WorldConfig().end_ts
    assert end - pd.Timedelta(days=14) <= sent.min() and max(sent.max(), events.max()) < end < pd.Timestamp.now(tz="UTC")


@pytest.mark.slow
def test_real_cdnow_data_from_ingest_to_online_features(home):
    """The real CDNOW log through ingest -> build -> apply -> materialise, checked against the raw file."""
    for args in (["ingest", "--mapping", str(ROOT / "examples" / "cdnow" / "mapping.yaml"),
                  "--allow-dir", str(ROOT.parent / "shared" / "data")],
                 ["features", "build"], ["features", "apply"], ["features", "materialize"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "behaviour" in result.output  # the materialise summary table lists the views

    from nextbest.features.store import feature_store

    store = feature_store(Settings())
    raw = pd.read_csv(ROOT.parent / "shared" / "data" / "cdnow_sample.txt", sep=r"\s+", header=None,
                      names=["cdnow_id", "user", "date", "cds", "dollars"], dtype={"user": str})
    busiest = raw["user"].value_counts().index[0]
    online = store.get_online_features(features=store.get_feature_service("decision_v1"),
                                       entity_rows=[{"user_id": busiest}]).to_dict()
    mine = raw[raw["user"] == busiest]
    assert online["purchases_all"] == [len(mine)]
    assert online["revenue_all"][0] == pytest.approx(mine["dollars"].sum())
    assert online["lifecycle_stage"] == ["customer"]
    as_of = pd.Timestamp("1998-07-01")  # the newest snapshot: the day after the last purchase in the file
    recent = pd.to_datetime(mine["date"].astype(str)) >= as_of - pd.Timedelta(days=90)
    assert online["purchases_90d"] == [int(recent.sum())]
    assert online["aff_music"] == [pytest.approx(1.0)]  # the only category holds all the interest


def test_fits_option_is_checked_and_reaches_the_uplift_config(home, monkeypatch):
    """`--fits` (train uplift, retrain): K or ARM=K,... checked before any step runs (exit 2, a message naming what
    is wrong and how to write it, no traceback), read by the uplift's funnel learner only, and passed on as
    `UpliftConfig.arm_fits`."""
    from nextbest.pipelines import retrain as pipeline
    from nextbest.training.jobs import TrainConfig, model_config
    from nextbest.training.uplift import UpliftConfig

    for args, wrong in ((["train", "uplift", "--fits", "0"], "the count '0' is not a number of fits"),
                        (["train", "uplift", "--fits", "ctrl=2"], "'ctrl=2' does not name a funnel arm"),
                        (["train", "uplift", "--fits", "convert=x"], "the convert arm's count 'x'"),
                        (["train", "uplift", "--fits", "21"], "the count '21'"),
                        (["train", "uplift", "--learner", "s", "--fits", "3"], "--learner s has none"),
                        (["train", "churn", "--fits", "3"], "--fits is read by the uplift model only"),
                        (["retrain", "--fits", "control=-1"], "the control arm's count '-1'")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        output = " ".join(result.output.split())  # rich wraps long lines
        assert wrong in output and "Traceback" not in result.output, (args, output)
        if "is not a number" in wrong or "does not name" in wrong:
            assert "e.g. '3' or 'click=3,convert=3'" in output and "engage, click, convert, control" in output
    assert not (home / "retrain").exists() and not (home / "mlruns").exists()  # refused before any step ran
    assert "--fits" in runner.invoke(app, ["train", "--help"]).output
    seen = []

    def spy(settings, config, resume, progress):  # the pipeline itself has its own tests (tests/test_pipelines.py)
        seen.append(config)
        return {"run_id": "r1", "status": "done", "steps": {}}

    monkeypatch.setattr(pipeline, "retrain", spy)
    for flag, expected in ((["--fits", "convert=3, click=2"], {"control": 3, "convert": 3, "click": 2}),
                           (["--fits", "2"], dict.fromkeys(("engage", "click", "convert", "control"), 2)), ([], None)):
        result = runner.invoke(app, ["retrain", *flag])
        assert result.exit_code == 0, result.output
        assert seen[-1].uplift_arm_fits == expected
        arm_fits = model_config("uplift", TrainConfig(uplift_arm_fits=expected)).arm_fits
        assert arm_fits == (UpliftConfig().arm_fits if expected is None else expected)


def test_retrain_takes_the_uplift_options_of_train_and_prints_the_gates_argmax(home, monkeypatch):
    from nextbest.pipelines import retrain as pipeline

    result = runner.invoke(app, ["retrain", "--learner", "q"])
    assert result.exit_code == 2 and "--learner 'q'" in result.output and "auto" in result.output
    assert "Traceback" not in result.output and not (home / "retrain").exists()  # refused before any step ran
    # One definition of the options: `retrain --help` and `train --help` say the same.
    for option in ("--shrink", "--no-shrink", "--learner"):
        assert option in runner.invoke(app, ["retrain", "--help"]).output
    seen = []
    row = {"dr": 0.05, "dr_low": 0.04, "dr_high": 0.06, "dr_diff": 0.0, "dr_diff_low": 0.0, "dr_diff_high": 0.0,
           "matched": 300, "incremental_revenue": float("nan")}
    policies = {"champions": row, "challengers": {**row, "dr": 0.055}, "challengers (argmax)": {**row, "dr": 0.0431}}

    def spy(settings, config, resume, progress):  # the pipeline itself has its own tests (tests/test_pipelines.py)
        seen.append(config)
        return {"run_id": "r1", "status": "done", "steps": {"evaluate": {"status": "done", "policies": policies}}}

    monkeypatch.setattr(pipeline, "retrain", spy)
    for flag, expected in (("--no-shrink", False), ("--shrink", True), (None, None)):
        result = runner.invoke(app, ["retrain", "--learner", "t", *([flag] if flag else [])])
        assert result.exit_code == 0, result.output
        assert (seen[-1].uplift_shrinkage, seen[-1].uplift_learner) == (expected, "t")
    assert "challengers (argmax)" in result.output and "0.0431" in result.output and "raw argmax" in result.output


def test_ingest_makes_the_ingested_offers_and_channels_the_decision_catalog(raw_frames, tmp_path, home):
    """A company's own offers and channels are what the service decides over, not the built-in catalog (which a
    home without an operator config got at the service's first start, whatever it had ingested)."""
    from nextbest.serving.config import load_config

    result = runner.invoke(app, ["ingest", str(write_csvs(raw_frames, tmp_path / "in"))])
    assert result.exit_code == 0, result.output
    config = load_config(home / "operator.yaml")
    assert config.offer_ids() == ["o1", "o2"] and [c.channel for c in config.channels] == ["email", "sms", "push"]
    assert config.offers[0].eligibility == "lifecycle_stage in [customer, confirmed_lead]"
    assert "decision catalog" in result.output
    # an operator config already in force stays (it may hold the operator's edits); a note says it is not the tables'
    edited = (home / "operator.yaml").read_text().replace("value: 20.0", "value: 25.0")
    (home / "operator.yaml").write_text(edited)
    again = runner.invoke(app, ["ingest", str(write_csvs(raw_frames, tmp_path / "in"))])
    assert again.exit_code == 0 and (home / "operator.yaml").read_text() == edited and "note:" not in again.output
    other = {**raw_frames, "offers": raw_frames["offers"].assign(offer_id=["p1", "p2"]),
             "contacts": raw_frames["contacts"].assign(offer_id="p1")}
    third = runner.invoke(app, ["ingest", str(write_csvs(other, tmp_path / "other"))])
    assert third.exit_code == 0 and "not the ingested offers table" in " ".join(third.output.split())
    assert load_config(home / "operator.yaml").offer_ids() == ["o1", "o2"]


def test_a_mapping_whose_events_file_is_missing_reports_that_alone(tmp_path, home):
    """Users derived from events whose file failed: one error naming the file, not a second one about derive_from."""
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("tables:\n  events:\n    path: missing.csv\n  users:\n    derive_from: events\n"
                       "    constants: {timezone: UTC}\n")
    result = runner.invoke(app, ["ingest", "--mapping", str(mapping)])
    assert result.exit_code == 2 and "missing.csv: file does not exist" in result.output
    assert "derive_from" not in result.output and "1 problem(s)" in result.output


def test_retrain_takes_assume_utc_and_names_the_gate_that_decided(raw_frames, tmp_path, home, monkeypatch):
    """An export without offsets loads through `retrain FOLDER --assume-utc` as through `ingest --assume-utc` (the
    nightly cron line of the README), and a challenger the policy gate sent back to its holdout says so."""
    from nextbest.features.contract import ContractError
    from nextbest.pipelines import retrain as pipeline

    naive = {t: df.assign(**{c: pd.to_datetime(df[c], utc=True).dt.tz_localize(None) for c in df
                             if isinstance(df[c].dtype, pd.DatetimeTZDtype)}) for t, df in raw_frames.items()}
    folder = write_csvs(naive, tmp_path / "naive")
    with pytest.raises(ContractError, match="--assume-utc"):
        pipeline._ingest(Settings(), pipeline.RetrainConfig(source=folder, logs=False), {})
    done = pipeline._ingest(Settings(), pipeline.RetrainConfig(source=folder, logs=False, assume_utc=True), {})
    assert done["rows"]["users"] == len(raw_frames["users"])

    seen = []
    state = {"run_id": "r1", "status": "done", "steps": {
        "train": {"status": "done", "models": {"churn": {"version": "2", "promoted": False, "deferred": True}}},
        "evaluate": {"status": "done", "decision": {"by": "holdout", "reason": "too few matched decisions"}},
        "promote": {"status": "done", "promoted": {}}}}

    def spy(settings, config, resume, progress):  # the pipeline itself has its own tests (tests/test_pipelines.py)
        seen.append(config)
        return state

    monkeypatch.setattr(pipeline, "retrain", spy)
    result = runner.invoke(app, ["retrain", str(folder), "--assume-utc"])
    assert result.exit_code == 0, result.output
    assert seen[-1].assume_utc and seen[-1].source == folder
    assert "kept champion on the holdout (the policy gate's fallback)" in result.output
    state["steps"]["evaluate"]["decision"]["by"] = "off-policy"
    result = runner.invoke(app, ["retrain", str(folder)])
    assert not seen[-1].assume_utc and "v2 kept champion by the policy gate" in result.output
