"""A public randomised experiment that a package ships (Thornton 2008, via causaldata), mapped onto the contract by
benchmarks/export_thornton.py: the export passes the contract as it stands and supports the uplift model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nextbest.features.contract import conform
from nextbest.training.jobs import skipped_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export():
    spec = importlib.util.spec_from_file_location("export_thornton", ROOT / "benchmarks" / "export_thornton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tables(module.thornton())


def test_the_shipped_experiment_maps_onto_the_contract_and_trains_uplift(export):
    raw = {name: conform(name, frame, f"{name}.csv") for name, frame in export.items()}  # ContractError otherwise
    contacts = raw["contacts"]
    assert len(contacts) == len(raw["users"]) == 2_834  # everyone with a known incentive and outcome, once
    control = contacts["variant"] == "control"
    assert contacts.loc[control, "offer_id"].isna().all() and contacts.loc[~control, "offer_id"].notna().all()
    arm = contacts["offer_id"].fillna("control")
    # The propensity is the arm's share (the amounts were drawn at random): one value per arm, summing to 1.
    per_arm = contacts.groupby(arm)["propensity"].agg(["nunique", "first", "size"])
    assert (per_arm["nunique"] == 1).all() and per_arm["first"].sum() == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(per_arm["first"], per_arm["size"] / len(contacts), atol=1e-6)
    # Thornton's headline: any incentive more than doubles the share who learn their result (34 % without).
    learned = contacts["converted_at"].notna().groupby(arm).mean()
    assert learned["control"] == pytest.approx(0.339, abs=0.001) and (learned.drop("control") > 0.7).all()
    assert set(raw["offers"]["offer_id"]) == set(arm) - {"control"} and (raw["offers"]["value"] > 0).all()
    # The uplift and conversion models can train on it; the send-time model cannot (no open tracking) and says so.
    assert skipped_models(raw, ["uplift", "conversion", "send_time"]) == {
        "send_time": "no open tracking in the contact log (`opened_at`)"}
