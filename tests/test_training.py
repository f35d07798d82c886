"""Training: planted signal, directional checks, the registry round trip, the promotion gate, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.features.settings import Settings

pytestmark = pytest.mark.slow  # builds a Feast store and an MLflow registry (about a minute per module)

START = pd.Timestamp("2026-03-01", tz="UTC")
ZONES = ("Asia/Shanghai", "Europe/Berlin", "America/New_York")
OFFERS = pd.DataFrame({"offer_id": ["o_books", "o_toys", "o_home"], "category": ["books", "toys", "home"],
                       "value": [10.0, 20.0, 30.0], "kind": ["discount", "discount", "retention"]})


def planted_raw(n_users: int = 1500, days: int = 70, n_contacts: int = 9000, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Raw tables with known answers: conversion and uplift grow with activity and category taste,
    opens happen near each user's preferred local hour. Returns (raw tables, per-contact truth)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i:05d}" for i in range(n_users)])
    zone = rng.choice(ZONES, n_users)
    activity = rng.lognormal(0.0, 0.8, n_users)  # app opens per day, the hidden "interest"
    taste = rng.integers(0, 3, n_users)  # favourite category (index into OFFERS)
    pref_hour = rng.integers(7, 23, n_users)  # local hour the user reads messages
    users = pd.DataFrame({"user_id": ids, "signup_at": START - pd.to_timedelta(rng.integers(1, 30, n_users), unit="D"),
                          "timezone": zone, "consent_email": True, "consent_push": rng.random(n_users) < 0.7,
                          "age": rng.integers(18, 70, n_users)})
    # Behaviour: app opens around the preferred hour, views and purchases mostly in the favourite category.
    n_open = rng.poisson(activity * days * 0.5)
    owner = np.repeat(np.arange(n_users), n_open)
    day = rng.integers(0, days, len(owner))
    hour = (pref_hour[owner] + rng.integers(-1, 2, len(owner))) % 24
    local = pd.to_datetime(START.tz_convert(None).normalize()) + pd.to_timedelta(day, unit="D") + pd.to_timedelta(hour, unit="h")
    ts = _to_utc(local, zone[owner])
    opens = pd.DataFrame({"user_id": ids[owner], "ts": ts, "type": "app_open"})
    n_view = rng.poisson(activity * days * 0.3)
    vo = np.repeat(np.arange(n_users), n_view)
    cat = np.where(rng.random(len(vo)) < 0.7, taste[vo], rng.integers(0, 3, len(vo)))
    views = pd.DataFrame({"user_id": ids[vo], "ts": START + pd.to_timedelta(rng.integers(0, days * 86400, len(vo)), unit="s"),
                          "type": np.where(rng.random(len(vo)) < 0.1, "purchase", "view"),
                          "category": OFFERS["category"].to_numpy()[cat]})
    views["amount"] = np.where(views["type"] == "purchase", 25.0, np.nan)
    events = pd.concat([opens, views], ignore_index=True).sort_values("ts", ignore_index=True)
    # Contacts in the second half, so features have history; 25 % are a held-out control group.
    cu = rng.integers(0, n_users, n_contacts)
    offer = rng.integers(0, 3, n_contacts)
    channel = rng.choice(["email", "push"], n_contacts)
    send_local_hour = rng.integers(7, 23, n_contacts)
    send_day = rng.integers(days // 2, days - 8, n_contacts)
    sent = _to_utc(pd.to_datetime(START.tz_convert(None).normalize()) + pd.to_timedelta(send_day, unit="D")
                   + pd.to_timedelta(send_local_hour, unit="h") + pd.to_timedelta(rng.integers(0, 3600, n_contacts), unit="s"), zone[cu])
    control = rng.random(n_contacts) < 0.25
    interest = np.minimum(activity[cu], 3.0) / 3.0
    match = (offer == taste[cu]).astype(float)
    p_organic = 0.02 + 0.10 * interest
    tau = 0.5 * interest * match + 0.02
    p_convert = np.where(control, p_organic, p_organic + tau)
    dist = np.abs(((send_local_hour - pref_hour[cu]) + 12) % 24 - 12)
    p_open = np.where(control, 0.0, 0.05 + 0.6 * (dist <= 1) + 0.15 * (dist == 2))
    converted = rng.random(n_contacts) < p_convert
    opened = rng.random(n_contacts) < p_open
    contacts = pd.DataFrame({
        "contact_id": [f"c{i:06d}" for i in range(n_contacts)], "user_id": ids[cu], "sent_at": sent,
        "campaign_id": "planted", "offer_id": OFFERS["offer_id"].to_numpy()[offer],
        "channel": np.where(control, None, channel), "variant": np.where(control, "control", "treatment"),
        "propensity": np.where(offer == 0, 0.5, 0.25),
        "opened_at": pd.Series(sent).where(opened) + pd.Timedelta(minutes=30),
        "converted_at": pd.Series(sent).where(converted) + pd.Timedelta(hours=5),
    })
    channels = pd.DataFrame({"channel": ["email", "push"], "cost": [0.002, 0.001]})
    truth = pd.DataFrame({"contact_id": contacts["contact_id"], "p_convert": p_convert, "uplift": tau, "p_open": p_open,
                          "control": control})
    raw = {"users": users, "events": events, "contacts": contacts, "offers": OFFERS, "channels": channels}
    return raw, truth


def _to_utc(local: pd.DatetimeIndex, zones: np.ndarray) -> pd.Series:
    out = pd.Series(pd.NaT, index=range(len(local)), dtype="datetime64[ns, UTC]")
    local = pd.Series(local)
    for z in np.unique(zones):
        mask = zones == z
        out[mask] = local[mask].dt.tz_localize(z, nonexistent="shift_forward", ambiguous="NaT").dt.tz_convert("UTC").to_numpy()
    return out.fillna(pd.Timestamp("2026-03-15", tz="UTC"))


def build_planted(home: Path, **kwargs) -> tuple[Settings, pd.DataFrame]:
    """A Feast store over a planted world (raw -> features -> apply -> materialise)."""
    from nextbest.features.build import build_all
    from nextbest.features.ingest import write_raw
    from nextbest.features.store import apply, materialize, write_tables

    settings = Settings(home=home)
    raw, truth = planted_raw(**kwargs)
    write_raw(raw, settings.raw_dir)
    write_tables(build_all(raw), settings.feature_dir)
    apply(settings)
    materialize(settings)
    return settings, truth


# --- fixtures: one planted world per module, one conversion model trained through the whole job ------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Settings, pd.DataFrame]:
    return build_planted(tmp_path_factory.mktemp("planted") / "home")


@pytest.fixture(scope="module")
def store(planted):
    from nextbest.features.store import feature_store

    return feature_store(planted[0])


@pytest.fixture(scope="module")
def raw(planted):
    from nextbest.training.jobs import read_raw_tables

    return read_raw_tables(planted[0])


@pytest.fixture(scope="module")
def conversion_run(planted):
    from nextbest.training.jobs import TrainConfig, train_model

    return train_model(planted[0], "conversion", TrainConfig(trials=3))


# --- training sets --------------------------------------------------------------------------------------

def test_training_set_uses_the_feature_service_and_is_point_in_time(store, raw):
    from nextbest.training import propensity
    from nextbest.training.datasets import service_features

    data = propensity.build_frame(store, raw)
    assert data.features == service_features(store, "conversion_v1")
    assert set(data.features) <= set(data.frame.columns)
    assert data.frame["channel"].notna().all()  # control rows are not in the conversion set
    # Each row's behaviour features are those of the newest weekly snapshot at or before the send.
    from nextbest.features.store import read_table
    from nextbest.training.datasets import TrainingSet

    snaps = read_table(store_settings(store), "behaviour")
    row = data.frame.iloc[len(data.frame) // 2]
    own = snaps[(snaps["user_id"] == row["user_id"]) & (snaps["event_timestamp"] <= row["event_timestamp"])]
    newest = own.sort_values("event_timestamp").iloc[-1]
    assert row["app_opens_30d"] == newest["app_opens_30d"]
    assert isinstance(data, TrainingSet)


def store_settings(store) -> Settings:
    return Settings(home=Path(store.repo_path).parent)


def test_split_is_time_based_when_labels_span_time(store, raw):
    from nextbest.training import propensity
    from nextbest.training.datasets import split

    data = propensity.build_frame(store, raw)
    train, holdout = split(data, 0.2, seed=1)
    assert train.frame["event_timestamp"].max() <= holdout.frame["event_timestamp"].min()
    assert abs(len(holdout.frame) / len(data.frame) - 0.2) < 0.02


def test_shared_join_gives_each_model_exactly_its_own_feature_service_frame(store, raw):
    from nextbest.training import propensity, send_time
    from nextbest.training.jobs import shared_joins

    shared = shared_joins(store, ["conversion", "send_time", "purchase"])
    for module in (send_time, propensity):  # the smaller service first: the union join must still serve both
        direct, via = module.build_frame(store, raw), module.build_frame(store, raw, shared=shared)
        assert via.features == direct.features
        pd.testing.assert_frame_equal(via.frame, direct.frame)
    assert len(shared._frames) == 1  # one join of the contact log for both models


# --- planted signal and directions ------------------------------------------------------------------------

def test_conversion_recovers_planted_signal_close_to_the_oracle(planted, conversion_run, store, raw):
    from sklearn.metrics import roc_auc_score

    from nextbest.training import propensity
    from nextbest.training.datasets import split
    from nextbest.training.registry import load_champions

    settings, truth = planted
    _, holdout = split(propensity.build_frame(store, raw), 0.2, 7)
    oracle = roc_auc_score(holdout.y, truth.set_index("contact_id").loc[holdout.frame["contact_id"], "p_convert"])
    model = load_champions(settings)["conversion"].model
    auc = roc_auc_score(holdout.y, model.predict(holdout.frame))
    assert auc == pytest.approx(conversion_run.metrics["auc"], abs=1e-9)
    assert auc > 0.6 and auc >= 0.85 * oracle, (auc, oracle)


def test_more_interest_means_higher_conversion_propensity(planted, conversion_run, store, raw):
    from nextbest.training.registry import load_champions

    model = load_champions(planted[0])["conversion"].model
    from nextbest.training import propensity

    frame = propensity.build_frame(store, raw).frame.head(800)
    busy, idle = frame.copy(), frame.copy()
    for col in [c for c in frame if c.startswith(("app_opens_", "events_", "views_"))]:
        busy[col] = frame[col].quantile(0.95)
        idle[col] = 0
    assert model.predict(busy).mean() > model.predict(idle).mean() + 0.02


def test_uplift_ranking_follows_the_oracle_uplift(planted, store, raw, tmp_path):
    from scipy.stats import spearmanr

    from nextbest.training import uplift
    from nextbest.training.datasets import split
    from nextbest.training.tabular import FitConfig

    data = uplift.build_frame(store, raw)
    assert set(data.frame["treated"].unique()) == {0, 1}
    train, holdout = split(data, 0.3, 7)
    model = uplift.fit(train, uplift.UpliftConfig(fit=FitConfig(trials=2), learner="funnel"))
    truth = planted[1].set_index("contact_id").loc[holdout.frame["contact_id"], "uplift"]
    score = model.predict(holdout.frame)
    assert spearmanr(score, truth).statistic > 0.15
    assert uplift.evaluate(model, holdout)["qini_auc"] > 0
    # The funnel learner: its uplift is P(open) x (P(convert | opened) - P(convert | control)),
    # and it loads back from its plain files with the same predictions.
    assert isinstance(model, uplift.FunnelUpliftScorer)
    p_open, p_conv, p_ctrl = model.parts(holdout.frame)
    np.testing.assert_allclose(score, p_open * (p_conv - p_ctrl))
    model.save(tmp_path / "funnel")
    np.testing.assert_array_equal(uplift.FunnelUpliftScorer.load(tmp_path / "funnel").predict(holdout.frame), score)


def test_send_time_learns_the_preferred_hour(store, raw):
    from nextbest.training import send_time
    from nextbest.training.datasets import split

    data = send_time.build_frame(store, raw)
    train, holdout = split(data, 0.2, 7)
    model = send_time.fit(train, send_time.SendTimeConfig(epochs=4))
    metrics = send_time.evaluate(model, holdout)
    assert metrics["auc"] > 0.62
    # For a user with a sharp daily rhythm, the model prefers their peak hour to the opposite hour.
    row = holdout.frame.iloc[[int(np.argmax(holdout.frame["open_share_h20"].to_numpy()))]]
    peak = int(np.argmax(row[[f"open_share_h{h:02d}" for h in range(24)]].to_numpy()[0]))
    at = pd.concat([row.assign(local_hour=peak), row.assign(local_hour=(peak + 12) % 24)], ignore_index=True)
    p = model.predict(at)
    assert p[0] > p[1]
    # The rhythm term picks the hour: for users with a rich profile, the model's best of the history's send hours
    # is their own activity peak among them (the shares shrunk towards the population's move it only for sparse
    # profiles); logged beside the model, the plain baselines' open rate at their hours.
    rich = holdout.frame[holdout.frame["rhythm_events_365d"].to_numpy() >= 40].drop_duplicates("user_id").head(50)
    hours = np.arange(8, 22)
    grid = np.stack([model.predict(rich.assign(local_hour=h)) for h in hours], axis=1)
    shares = rich[[f"open_share_h{h:02d}" for h in hours]].to_numpy()
    assert len(rich) >= 10 and (hours[grid.argmax(1)] == hours[shares.argmax(1)]).mean() >= 0.8
    assert metrics["hour_choice_model_open_lift"] > 1 and metrics["hour_choice_share_open_lift"] > 1
    assert metrics["hour_choice_model_matched"] > 0 and "hour_choice_population_open_lift" in metrics


# --- registry: round trip, gate, promote/rollback, tampering -----------------------------------------------

def test_champion_loads_back_with_identical_predictions(planted, conversion_run, store, raw):
    from nextbest.training import propensity
    from nextbest.training.registry import MODEL_NAMES, load_champions

    champions = load_champions(planted[0])
    assert set(champions) == {"conversion"} and champions["conversion"].version == conversion_run.version
    assert champions["conversion"].model.feature_service == "conversion_v1"
    frame = propensity.build_frame(store, raw).frame.head(300)
    again = load_champions(planted[0])["conversion"].model
    np.testing.assert_array_equal(champions["conversion"].model.predict(frame), again.predict(frame))
    assert MODEL_NAMES["conversion"] == "nextbest-conversion"


def test_the_logged_input_example_is_no_customers_row(planted, conversion_run, store, raw):
    from nextbest.training import propensity
    from nextbest.training.registry import synthetic_example

    paths = list(planted[0].artifact_dir.rglob("input_example.json"))
    assert paths and conversion_run.version
    frame = propensity.build_frame(store, raw).frame
    for path in paths:
        example = json.loads(path.read_text())
        assert len(example["data"]) == 1
        same = np.ones(len(frame), dtype=bool)
        for col, value in zip(example["columns"], example["data"][0], strict=True):
            column = frame[col]
            same &= (column.astype(str) == str(value)).to_numpy() if column.dtype == object else \
                np.isclose(column.astype(float).to_numpy(), float(value) if value is not None else np.nan, equal_nan=True)
        assert not same.any()  # no real row has every logged value
    ids = pd.DataFrame({"email": ["a@x.com", "b@y.com", "c@z.com"], "n": [1, 5, 9], "tier": ["gold", "gold", "blue"]})
    made_up = synthetic_example(ids)
    assert made_up.to_dict("records") == [{"email": "example", "n": 5, "tier": "gold"}]  # unique values never copied


def test_worse_challenger_is_not_promoted_and_better_one_is(planted, conversion_run, store, raw):
    from nextbest.training import propensity
    from nextbest.training.datasets import split
    from nextbest.training.metrics import classification_metrics
    from nextbest.training.registry import gate, list_versions, load_champions, log_model, promote, rollback

    settings = planted[0]
    champion = conversion_run.version
    _, holdout = split(propensity.build_frame(store, raw), 0.2, 7)

    class Shuffled:
        """A deliberately worse model: the champion's scores in random order."""

        def __init__(self, inner):
            self.inner, self.feature_service = inner, inner.feature_service

        def predict(self, frame):
            return np.random.default_rng(0).permutation(self.inner.predict(frame))

        def save(self, folder):
            self.inner.save(folder)

    good = load_champions(settings)["conversion"].model
    bad = Shuffled(good)
    bad_auc = classification_metrics(holdout.y, bad.predict(holdout.frame))["auc"]
    run_id, version = log_model(settings, "conversion", good, {"auc": bad_auc}, {}, holdout.frame[holdout.inputs].head(3))
    decision = gate(settings, "conversion", version, run_id, bad_auc,
                    lambda m: classification_metrics(holdout.y, m.predict(holdout.frame))["auc"])
    assert not decision["promoted"] and decision["champion"] > bad_auc
    assert load_champions(settings)["conversion"].version == champion
    # A challenger that scores higher on the same holdout takes over, and the evidence is on its run.
    run_id, better = log_model(settings, "conversion", good, {"auc": 0.99}, {}, holdout.frame[holdout.inputs].head(3))
    decision = gate(settings, "conversion", better, run_id, 0.99,
                    lambda m: classification_metrics(holdout.y, m.predict(holdout.frame))["auc"])
    assert decision["promoted"]
    assert load_champions(settings)["conversion"].version == better
    import mlflow

    assert mlflow.MlflowClient(settings.tracking_uri).get_run(run_id).data.tags["gate_decision"] == "promoted"
    rows = {r["version"]: r["aliases"] for r in list_versions(settings) if r["model"] == "conversion"}
    assert "champion" in rows[better] and "champion" not in rows[champion]
    assert rollback(settings, "conversion") == (better, champion)
    assert load_champions(settings)["conversion"].version == champion
    assert promote(settings, "conversion", better) == (champion, better)
    assert rollback(settings, "conversion") == (better, champion)
    # Judged paired on the same holdout (the uplift gate: training.uplift.paired_qini), a higher score is not enough:
    # the interval of the difference must lie above 0.
    def paired(low: float):
        return lambda m: {"champion": 0.90, "difference": 0.02, "low": low, "high": 0.05, "users": 500, "draws": 200}

    run_id, lucky = log_model(settings, "conversion", good, {"auc": 0.92}, {}, holdout.frame[holdout.inputs].head(3))
    decision = gate(settings, "conversion", lucky, run_id, 0.92, lambda m: 0.90, paired_fn=paired(-0.01))
    assert not decision["promoted"] and decision["champion"] == 0.90 and decision["difference"] == [0.02, -0.01, 0.05]
    assert "not surely better" in decision["reason"] and load_champions(settings)["conversion"].version == champion
    decision = gate(settings, "conversion", lucky, run_id, 0.92, lambda m: 0.90, paired_fn=paired(0.01))
    assert decision["promoted"] and "surely better" in decision["reason"]
    assert load_champions(settings)["conversion"].version == lucky
    # A holdout that scores neither model (50 users: an undefined Qini for both) is no evidence: the champion stays
    # (it was promoted as "champion score undefined"); a champion alone that cannot score it still gives way.
    run_id, blind = log_model(settings, "conversion", good, {"auc": 0.5}, {}, holdout.frame[holdout.inputs].head(3))
    decision = gate(settings, "conversion", blind, run_id, float("nan"), lambda m: float("nan"), defer=True)
    assert not decision["better_on_holdout"] and "undefined" in decision["reason"]
    decision = gate(settings, "conversion", blind, run_id, float("nan"), lambda m: float("nan"))
    assert not decision["promoted"] and load_champions(settings)["conversion"].version == lucky
    decision = gate(settings, "conversion", blind, run_id, 0.6, lambda m: float("nan"))
    assert decision["promoted"] and decision["reason"] == "champion score undefined"


def test_tampered_artifact_fails_to_load_with_a_clear_error(tmp_path, store, raw):
    from nextbest.training import propensity
    from nextbest.training.datasets import split
    from nextbest.training.registry import ChecksumError, gate, load_champions, log_model
    from nextbest.training.tabular import FitConfig

    settings = Settings(home=tmp_path / "home")
    train, holdout = split(propensity.build_frame(store, raw), 0.2, 7)
    model = propensity.fit(train, propensity.ConversionConfig(fit=FitConfig(trials=1)))
    run_id, version = log_model(settings, "conversion", model, {"auc": 0.7}, {}, holdout.frame[holdout.inputs].head(3))
    gate(settings, "conversion", version, run_id, 0.7, lambda m: 0.0)
    assert load_champions(settings)["conversion"].version == version
    [text] = [p for p in settings.artifact_dir.rglob("model.txt")]
    text.write_text(text.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(ChecksumError, match="model.txt does not match its sha256"):
        load_champions(settings)


def test_no_registry_means_no_champions_and_unreachable_store_is_reported(tmp_path):
    from nextbest.training.registry import RegistryUnavailable, load_champions

    assert load_champions(Settings(home=tmp_path / "empty")) == {}
    with pytest.raises(RegistryUnavailable):
        load_champions(Settings(home=tmp_path, mlflow_uri="postgresql://nobody@127.0.0.1:1/none"))


# --- the command line (runs last: it adds versions to the module's registry) -------------------------------

def test_cli_trains_lists_promotes_and_reports_user_mistakes(planted, conversion_run, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from nextbest.pipelines import train_commands
    from nextbest.pipelines.train_commands import register

    monkeypatch.setattr(train_commands.console, "width", 200)  # the results table is wide
    app = typer.Typer()
    register(app)
    monkeypatch.setenv("NEXTBEST_HOME", str(planted[0].home))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "propensity", "--trials", "1"])
    assert result.exit_code == 0, result.output
    assert "conversion" in result.output and "auc / qini" in result.output
    assert "promoted" in result.output or "kept v" in result.output
    listing = runner.invoke(app, ["models"])
    assert listing.exit_code == 0 and "champion" in listing.output and "nextbest" not in listing.output.split("model registry")[0]
    for args, message in ((["train", "nosuch"], "unknown model"), (["rollback", "churn"], "no champion"),
                          (["train", "churn", "--as-of", "2099-01-01"], "runs past the data"),
                          (["promote", "propensity", "--version", "999"], "no version 999")):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2, (args, bad.output)
        assert message in bad.output and "Traceback" not in bad.output


def test_cli_train_uplift_prints_and_records_why_auto_chose_its_learner(planted, monkeypatch):
    """`nextbest train uplift` (learner auto) prints each candidate's cross-fitted Qini and paired gap to s and the
    reason, and the MLflow run holds the same: param `learner` and `learner_choice`, metrics `cv_gap_to_s*/<learner>`."""
    import mlflow
    import typer
    from typer.testing import CliRunner

    from nextbest.pipelines import train_commands
    from nextbest.pipelines.train_commands import register
    from nextbest.training.uplift import pick_learner, selection_table

    monkeypatch.setattr(train_commands.console, "width", 200)
    app = typer.Typer()
    register(app)
    monkeypatch.setenv("NEXTBEST_HOME", str(planted[0].home))
    result = CliRunner().invoke(app, ["train", "uplift", "--trials", "1", "--sample-rows", "3000"])
    assert result.exit_code == 0, result.output
    assert "gap to s" in result.output and "uplift learner: " in result.output
    client = mlflow.MlflowClient(planted[0].tracking_uri)
    run = client.get_run(client.get_model_version_by_alias("nextbest-uplift", "challenger").run_id).data
    table = selection_table(run.metrics)
    assert {"s", "t", "x", "dr"} <= set(table) and table["s"]["gap_to_s"] == 0.0
    for name, row in table.items():
        assert row["gap_to_s_low"] <= row["gap_to_s"] <= row["gap_to_s_high"], name
    chosen, reason = pick_learner(table)  # the rule, re-read from the record, gives what was fitted and printed
    assert (run.params["learner"], run.params["learner_choice"]) == (chosen, reason)
    assert f"uplift learner: {reason}" in " ".join(result.output.split())


def test_models_notebook_runs_on_tiny_data(planted):
    import nbformat
    from nbclient import NotebookClient

    path = Path(__file__).resolve().parents[1] / "notebooks" / "01-models.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored stripped
    nb.cells[1].source = f"HOME = {str(planted[0].home)!r}\nTRIALS = 1\nSEED = 7"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parents[1])}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "rows," in text and "champion version" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_a_snapshot_date_the_caller_did_not_choose_is_not_named_as_their_as_of():
    """`retrain` has no --as-of: when the default newest snapshot cannot take labels, the message names that date."""
    from nextbest.training.datasets import snapshot_dates

    events = pd.DataFrame({"ts": pd.to_datetime(["2026-09-01 10:00", "2026-09-03 10:00"], utc=True)})
    with pytest.raises(ValueError) as chosen_by_default:
        snapshot_dates(events, horizon_days=28)
    assert "the newest snapshot date" in str(chosen_by_default.value) and "--as-of 20" not in str(chosen_by_default.value)
    with pytest.raises(ValueError, match=r"^--as-of 2026-09-02 \+ horizon 28 d runs past the data"):
        snapshot_dates(events, horizon_days=28, as_of=pd.Timestamp("2026-09-02"))
