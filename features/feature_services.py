"""FeatureServices: the single, versioned feature list of each model, for training and serving alike."""

from __future__ import annotations

import re

from feast import FeatureService, FeatureView

__all__ = ["MODEL_VIEWS", "LABEL_VIEWS", "ONLY_FOR", "feature_services", "service_name", "label_service"]

# model -> the feature views it reads. Training (get_historical_features) and serving
# (get_online_features) both ask for the service, never for a hand-written column list.
MODEL_VIEWS: dict[str, tuple[str, ...]] = {
    "conversion": ("profile", "behaviour", "channel", "time_profile", "tags"),
    "uplift": ("profile", "behaviour", "channel", "time_profile", "tags"),
    "purchase": ("profile", "behaviour", "tags"),
    "churn": ("profile", "behaviour", "channel", "tags"),
    "channel_response": ("profile", "behaviour", "channel", "time_profile"),
    "send_time": ("profile", "channel", "time_profile"),
    "offer_net": ("profile", "behaviour", "channel", "time_profile", "tags"),
    "decision": ("profile", "behaviour", "channel", "time_profile", "tags", "realtime"),
}
VERSION = "v1"
# A model for any labelled outcome (`nextbest train label NAME`) reads what churn reads: who the user is,
# what they did, how they answer contacts (when there is a contact log), and their segments.
LABEL_VIEWS: tuple[str, ...] = ("profile", "behaviour", "channel", "tags")


def service_name(model: str) -> str:
    return f"{model}_{VERSION}"


# Columns of a view that only some models read (view -> (columns, the models)): the time profile's past sends and
# opens per bin of local send hours are evidence of the daily rhythm the send-time model reads through its rhythm
# prior (training/scorers.py `cluster_posterior`), not inputs of the other models (a retrain of those stays as it was).
ONLY_FOR: dict[str, tuple[re.Pattern, tuple[str, ...]]] = {
    "time_profile": (re.compile(r"(sends|opens)_h\d\d_365d"), ("send_time", "decision")),
}


def _projection(view: FeatureView, model: str) -> FeatureView:
    """`view` as `model` reads it: without the columns `ONLY_FOR` keeps for other models."""
    pattern, models = ONLY_FOR.get(view.name, (None, ()))
    if pattern is None or model in models:
        return view
    keep = [f.name for f in view.features if not pattern.fullmatch(f.name)]
    return view if len(keep) == len(view.features) else view[keep]


def feature_services(views: list[FeatureView]) -> list[FeatureService]:
    """One FeatureService per model over the views that exist (a company without contacts has no channel view)."""
    by_name = {v.name: v for v in views}
    return [
        FeatureService(name=service_name(model), features=[_projection(by_name[n], model) for n in names if n in by_name],
                       description=f"Features of the {model} model.")
        for model, names in MODEL_VIEWS.items()
    ]


def label_service(name: str, views: list[FeatureView]) -> FeatureService:
    """The FeatureService of the label model NAME (`label_NAME_v1`) over the LABEL_VIEWS that exist."""
    by_name = {v.name: v for v in views}
    return FeatureService(name=service_name(f"label_{name}"), features=[by_name[n] for n in LABEL_VIEWS if n in by_name],
                          description=f"Features of the label model {name!r} (propensity of a labelled outcome).")
