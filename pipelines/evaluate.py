"""Policy evaluation in the simulated world: the NBA engine with the current champions against baselines.

Every policy is replayed over the same fresh period (simulation/replay.py) under the same contact rules.
The model policies score each user once, with features as of the period start (the newest snapshot):
the send-time model picks each channel's best allowed local hour, the conversion and uplift models
score offer x channel at that hour, the churn model boosts retention offers, exactly the serving
engine's functions (serving/engine.py). Each day a policy contacts each reachable user with the
best allowed action of positive expected value, exploring with probability epsilon.

Two yardsticks: the oracle (knows every hidden trait) and the history oracle (the same, but with each user's
category interests and channel responses as well as the logged history can tell them: simulation/beliefs.py),
an upper bound on what any policy scored on this history can earn.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.features.contract import TABLES, with_optional_columns
from nextbest.features.feature_views import VIEWS
from nextbest.features.ingest import read_raw
from nextbest.features.settings import Settings
from nextbest.features.store import feature_store, read_table, training_store
from nextbest.pipelines.offpolicy import (
    LogsConfig,
    action_names,
    decisions_since,
    judge_choices,
    judged_log,
    logged_feasibility,
)
from nextbest.pipelines.retrain import ARGMAX_SUFFIX
from nextbest.serving import engine
from nextbest.serving.config import catalog_config, default_config, load_config
from nextbest.simulation.beliefs import history_beliefs
from nextbest.simulation.policies import Blast, NoContact, OraclePolicy, RandomPolicy, best_selling_order
from nextbest.simulation.replay import (
    Choice,
    Period,
    ReplayConfig,
    Rules,
    Situation,
    keep_capacity,
    replay,
)
from nextbest.simulation.truth import Truth

__all__ = ["champion_set", "ModelPolicy", "PolicyScores", "policy_scores", "model_policies", "revenue_per_user", "latest_features", "feature_state", "operator_rules", "load_period",
           "evaluate_policies", "judge_model_sets", "off_policy", "off_policies", "simulated_truths", "write_report",
           "raw_argmax"]

HISTORY_ORACLE = "history oracle"  # the oracle deciding on what the history tells of interests and channels
_CHUNK = 2_000  # users per scoring call: bounds the model input frame (users x offers x channels rows)


def load_period(settings: Settings, need_truth: bool = True) -> tuple[Period, dict[str, pd.DataFrame]]:
    """The simulated world on disk (raw tables + truth) as a replay period; with `need_truth=False` and no
    truth on disk, the company's logs as a period without one (off-policy evaluation only)."""
    simulated = (settings.truth_dir / "truth.json").exists()
    if need_truth and not simulated:
        raise FileNotFoundError(f"no simulated truth in {settings.truth_dir}: policy evaluation needs `nextbest simulate`")
    tables = {t: read_raw(settings.raw_dir, t) for t in TABLES}
    tables = {k: v for k, v in tables.items() if v is not None}
    if tables.get("contacts") is None or tables.get("offers") is None:
        raise ValueError("policy evaluation needs the contacts and offers tables (`nextbest ingest`)")
    if tables.get("channels") is None:  # optional in the contract: the channels the log used, at no known cost
        used = tables["contacts"]["channel"].dropna().astype(str).unique()
        tables["channels"] = pd.DataFrame({"channel": sorted(used), "cost": 0.0})
    for name in ("offers", "channels"):
        tables[name] = with_optional_columns(name, tables[name])
    return Period.from_tables(tables, Truth.load(settings.truth_dir) if simulated else None), tables


def operator_rules(settings: Settings) -> Rules:
    """The replay's contact caps: the operator config's, the service's own (the built-in config's without one)."""
    path = settings.operator_config or settings.home / "operator.yaml"
    return Rules.of((load_config(path) if path.exists() else default_config()).caps)


def latest_features(settings: Settings, user_ids: np.ndarray, as_of: pd.Timestamp | None = None) -> engine.Users:
    """Each user's newest feature values from the offline tables, in `user_ids` order (the online view, in bulk);
    with `as_of`, the newest snapshot at or before it (what the online store held then)."""
    index = pd.Index(user_ids)
    users: engine.Users = {"user_id": np.asarray(user_ids, dtype=object)}
    for view in VIEWS:
        try:
            df = read_table(settings, view)
        except FileNotFoundError:
            continue
        if as_of is not None:
            df = df[pd.to_datetime(df["event_timestamp"], utc=True) <= as_of]
        df = df.sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)
        rows = index.get_indexer(df["user_id"].astype(str))
        keep = rows >= 0
        for col in df.columns.drop(["user_id", "event_timestamp"]):
            values = df[col].to_numpy()[keep]
            numeric = pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])
            out = np.full(len(index), np.nan) if numeric else np.full(len(index), None, dtype=object)
            out[rows[keep]] = values.astype(float) if numeric else values
            users[col] = out
    return users


def feature_state(settings: Settings, period: Period) -> Period:
    """`period` with its eligibility rules reading the features the decision service reads (each user's newest
    snapshot at or before the period's start), not the replay's own derivation from the raw tables: one state for
    the service's choice and the replay's judgement of it."""
    return dataclasses.replace(period, state=latest_features(settings, period.user_ids, as_of=period.start))


@dataclass(frozen=True)
class ModelPolicy:
    """The NBA engine's choice per user from precomputed expected values (U, O, C) and send hours (U, C): the
    serving engine's own rule (engine.greedy_many: best feasible EV above `min_ev`, offer priority breaking ties;
    engine.explore_many: its epsilon exploration and propensities)."""

    name: str
    ev: np.ndarray
    hours: np.ndarray
    epsilon: float = 0.0
    priority: np.ndarray | None = None  # (O,) offer priorities; None = all 0
    min_ev: float = 0.0  # the operator config's min_expected_value

    def choose(self, s: Situation, rng: np.random.Generator) -> Choice:
        n, n_o, n_c = self.ev.shape
        feasible = s.eligible[:, :, None] & s.allowed[:, None, :]
        priority = self.priority if self.priority is not None else np.zeros(n_o)
        greedy = engine.greedy_many(self.ev, feasible, priority, self.min_ev)
        chosen, prob, _ = engine.explore_many(greedy, self.epsilon, rng)
        o, c = np.divmod(chosen.clip(0), n_c)
        score = np.where(chosen >= 0, self.ev.reshape(n, -1)[np.arange(n), chosen.clip(0)], -np.inf)
        choice = Choice(np.where(chosen >= 0, o, -1), c, self.hours[np.arange(n), c], score, prob)
        return keep_capacity(choice, s.capacity_left)


def champion_set(settings: Settings, versions: dict[str, str] | None = None) -> engine.ModelSet:
    """The champions, each with the feature columns of its FeatureService; `versions` (model -> registry
    version) stand in for the champions of those models (a set of challengers to judge)."""
    from nextbest.training.registry import Champion, load_champions, load_version

    champions = load_champions(settings)
    for kind, version in (versions or {}).items():
        champions[kind] = Champion(kind, version, load_version(settings, kind, version))
    store = feature_store(settings)
    columns = {}
    for kind, champ in champions.items():
        fs = store.get_feature_service(champ.model.feature_service)
        columns[kind] = [f.name for p in fs.feature_view_projections for f in p.features]
    return engine.ModelSet(models=dict(champions), columns=columns).compile()  # scored as serving scores them


def raw_argmax(models: engine.ModelSet) -> engine.ModelSet | None:
    """The same models with the uplift model's shrinkage taken off (its raw per-user argmax), or None when its
    uplift model has none (training/shrinkage.py)."""
    from nextbest.training.registry import Champion

    uplift = models.models.get("uplift")
    if uplift is None or getattr(uplift.model, "shrinkage_", None) is None:
        return None
    bare = copy.copy(uplift.model)  # shallow: the fitted learners are shared, only the shrinkage differs
    bare.shrinkage_ = None
    return engine.ModelSet({**models.models, "uplift": Champion(uplift.name, uplift.version, bare)}, models.columns,
                           models.compiled)


@dataclass
class PolicyScores:
    """The champions' scores of a period's users, as serving computes them: each channel's send hour (U, C),
    P(convert) and uplift per (user, offer, channel), P(churn), P(opt-out) per (user, channel); `config` the
    period's catalog with the operator's levers."""

    config: object
    hours: np.ndarray
    p_convert: np.ndarray
    uplift: np.ndarray
    p_churn: np.ndarray
    opt_out: np.ndarray

    def policy(self, name: str, uplift: bool = True, epsilon: float = 0.0, config=None) -> ModelPolicy:
        """The policy choosing by serving's expected value (one definition: engine.expected_values_many), from the
        uplift (the NBA) or from P(convert) alone (propensity-only); `config`: other levers than the scores' (e.g. a
        scaled opt-out cost)."""
        config = config or self.config
        effect = self.uplift if uplift else np.full_like(self.uplift, np.nan)
        ev = engine.expected_values_many(self.p_convert, effect, config, self.p_churn, self.opt_out)
        priority = np.array([o.priority for o in config.offers], dtype=float)
        return ModelPolicy(name, ev, self.hours, epsilon, priority, config.min_expected_value)


def policy_scores(settings: Settings, period: Period, models: engine.ModelSet | None = None,
                  as_of: pd.Timestamp | None = None, users: engine.Users | None = None) -> PolicyScores:
    """`PolicyScores` from the current champions (or `models`); users are scored on their newest features (at or
    before `as_of` when given), or on `users` (the period's users' features, kept from an earlier read: a fixed
    yardstick)."""
    from nextbest.simulation.replay import hour_ok_matrix

    models = models if models is not None else champion_set(settings)
    # The period's catalog in its order, with the operator's levers of the EV (churn boost, minimum EV) when it has
    # a config: the gate judges the policy serving runs.
    operator = settings.operator_config or settings.home / "operator.yaml"
    config = catalog_config(period.offers, period.channels, base=load_config(operator) if operator.exists() else None)
    channels = config.channel_names()
    users = users if users is not None else latest_features(settings, period.user_ids, as_of)
    hour_ok = hour_ok_matrix(period.channels)
    n = period.n_users
    out = PolicyScores(config, np.zeros((n, len(channels)), dtype=np.int64), np.zeros((n, len(config.offers), len(channels))),
                       np.full((n, len(config.offers), len(channels)), np.nan), np.zeros(n), np.zeros((n, len(channels))))
    for start in range(0, n, _CHUNK):
        rows = np.arange(start, min(n, start + _CHUNK))
        part = engine.user_columns({k: v[rows] for k, v in users.items()})
        p_open = engine.send_time_scores(models, part, config)  # (u, C, 24)
        out.hours[rows] = np.where(hour_ok[None], p_open, -np.inf).argmax(axis=2)
        out.p_convert[rows], out.uplift[rows] = engine.conversion_scores(models, part, config, out.hours[rows],
                                                                         p_open=p_open)
        out.p_churn[rows] = engine.churn_scores(models, part, config)
        out.opt_out[rows] = engine.opt_out_risk(part, config)
    return out


def model_policies(settings: Settings, period: Period, epsilon: float = 0.0,
                   models: engine.ModelSet | None = None, as_of: pd.Timestamp | None = None,
                   users: engine.Users | None = None) -> list[ModelPolicy]:
    """The NBA policy (uplift-based EV) and the propensity-only baseline from `policy_scores`."""
    scores = policy_scores(settings, period, models, as_of, users)
    return [scores.policy("nba (uplift)", True, epsilon), scores.policy("propensity only", False, epsilon)]


def revenue_per_user(result, n_users: int) -> np.ndarray:
    """A replay's expected incremental revenue per user of its period (0 for a user it never contacted)."""
    return result.sends.groupby("user_idx")["expected_revenue"].sum().reindex(range(n_users), fill_value=0.0).to_numpy()


def evaluate_policies(settings: Settings, config: ReplayConfig | None = None, users: int | None = 5_000,
                      progress=None, ope_users: int | None = 10_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replay every policy over the same fresh period (on a seeded sample of `users`); metrics per policy, and
    the off-policy estimates of the NBA policy from the logged history of `ope_users` next to its simulated truth."""
    config = config or ReplayConfig(rules=operator_rules(settings))
    world, tables = load_period(settings)
    period = world.sample(users, seed=config.seed)
    step = progress or (lambda name: None)
    step("scoring users with the champions")
    models = champion_set(settings)
    nba, propensity_only = model_policies(settings, period, models=models)
    policies = [
        nba, propensity_only,
        NoContact(),
        RandomPolicy(),
        Blast(tuple(best_selling_order(tables, period.offers)), tuple(period.channels["cost"])),
        OraclePolicy(period, name=HISTORY_ORACLE, beliefs=history_beliefs(period.truth, tables, period.user_ids, period.start)),
        OraclePolicy(period),
    ]
    rows = []
    for policy in policies:
        step(f"replaying {policy.name}")
        rows.append({"policy": policy.name, **replay(period, policy, config).metrics})
    table = pd.DataFrame(rows).set_index("policy")
    for column, yardstick in (("share_of_oracle", "oracle"), ("share_of_history_oracle", HISTORY_ORACLE)):
        best = table.loc[yardstick, "incremental_revenue"]
        table[column] = table["incremental_revenue"] / best if best > 0 else np.nan
    step("off-policy estimates from the log")
    ope_period = world.sample(ope_users, seed=config.seed)
    cutoff, logged = _decisions(settings, tables, ope_period)
    # The same policy as it stood at the cutoff: features of then, so its choices do not depend on the
    # outcomes it is evaluated on.
    then = model_policies(settings, ope_period, models=models, as_of=cutoff)[0]
    # The truth's fatigue counts every contact the users received, also those before the judged decisions' cutoff.
    return table, off_policy(settings, then, ope_period, logged, seen=tables["contacts"])


def judge_model_sets(settings: Settings, sets: dict[str, engine.ModelSet], config: ReplayConfig | None = None,
                     users: int | None = 4_000, ope_users: int | None = 10_000, since: pd.Timestamp | None = None,
                     progress=None) -> pd.DataFrame:
    """The NBA policy of each model set on the same evidence, one row per set, and beside a set whose uplift model
    carries a shrinkage, the same set's raw argmax (`<label> (argmax)`, `raw_argmax`): what the shrinkage changed.

    Off-policy (SNIPS and DR with 95 % intervals; `dr_diff`: DR minus the first set's, paired on the same
    decisions, with its interval; `matched`: logged decisions where the policy takes the logged action)
    from the same logged decisions: those sent from `since` on when given (decisions no model
    trained on), else the newest 30 %. When the data is simulated, also replayed over the same fresh period:
    the truth's expected incremental revenue, its share of the oracle's, violations (NaN without a truth), and
    `revenue_diff`: the revenue minus the first set's, paired per user, with its 95 % interval.
    """
    from nextbest.training.ope import paired_difference

    config = config or ReplayConfig(rules=operator_rules(settings))
    step = progress or (lambda name: None)
    sets = {**sets, **{f"{label}{ARGMAX_SUFFIX}": raw for label, models in sets.items()
                       if (raw := raw_argmax(models)) is not None}}
    world, tables = load_period(settings, need_truth=False)
    simulated = world.truth is not None
    period = world.sample(users, seed=config.seed)
    oracle = np.nan
    if simulated:
        step("replaying the oracle")
        oracle = replay(period, OraclePolicy(period), config).metrics["incremental_revenue"]
    ope_period = world.sample(ope_users, seed=config.seed)
    cutoff, logged = _decisions(settings, tables, ope_period, since=since)
    rows, first, first_revenue = [], None, None
    step("off-policy estimates of every set's policy")
    # One judgement of all sets' policies: the same decisions, the same cross-fitted reward model.
    judged = off_policies(settings, {label: dataclasses.replace(model_policies(settings, ope_period, models=models,
                                                                               as_of=cutoff)[0], name=label)
                                     for label, models in sets.items()}, ope_period, logged, seen=tables["contacts"])
    for label, models in sets.items():
        row: dict = {"models": label, "versions": models.versions(), "incremental_revenue": np.nan,
                     "share_of_oracle": np.nan, "contacts": np.nan, "violations": np.nan}
        if simulated:
            step(f"replaying the NBA policy of the {label}")
            result = replay(period, model_policies(settings, period, models=models)[0], config)
            m = result.metrics
            row.update(incremental_revenue=m["incremental_revenue"], contacts=m["contacts"], violations=m["violations"],
                       share_of_oracle=m["incremental_revenue"] / oracle if oracle > 0 else np.nan)
            # Per user, paired with the first set on the same users and days: the difference's interval (in revenue).
            per_user = revenue_per_user(result, period.n_users)
            first_revenue = per_user if first_revenue is None else first_revenue
            gain = paired_difference(per_user, first_revenue)
            row.update(revenue_diff=gain.value * period.n_users, revenue_diff_low=gain.low * period.n_users,
                       revenue_diff_high=gain.high * period.n_users)
        ope = judged[label]
        matched, terms = int(ope.attrs["matched"]), ope.attrs["dr_terms"]
        first = terms if first is None else first
        diff = paired_difference(terms, first, ope.attrs["users"])
        row.update(dr_diff=diff.value, dr_diff_low=diff.low, dr_diff_high=diff.high)
        ope = ope.set_index("method")
        row.update({f"{k.lower()}{suffix}": float(ope.loc[k, col]) for k in ("SNIPS", "DR")
                    for suffix, col in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high"))})
        row.update(logged=int(ope.loc["DR", "n"]), matched=matched)
        rows.append(row)
    return pd.DataFrame(rows).set_index("models")


def _decisions(settings: Settings, tables: dict[str, pd.DataFrame], period: Period,
               since: pd.Timestamp | None = None) -> tuple[pd.Timestamp, dict[str, pd.DataFrame]]:
    """The period's users' logged decisions to judge policies on (`offpolicy.decisions_since`), cut at a feature
    snapshot of this home."""
    snapshots = read_table(settings, "behaviour")["event_timestamp"]
    return decisions_since(tables, snapshots, set(period.user_ids), since=since)


def write_report(table: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """The comparison as a PNG chart and an HTML page (table + chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    order = table.sort_values("incremental_revenue").index
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (col, title) in zip(axes, [("incremental_revenue", "incremental revenue"), ("contacts", "contacts"),
                                        ("unsubscribes", "unsubscribes + complaints")], strict=True):
        values = table.loc[order, col] + (table.loc[order, "complaints"] if col == "unsubscribes" else 0)
        ax.barh(list(order), values, color=["#2b8cbe" if "nba" in p else "#999999" for p in order])
        ax.set_title(title)
    fig.tight_layout()
    png = folder / "policy_comparison.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    html = folder / "policy_comparison.html"
    html.write_text(
        "<html><head><meta charset='utf-8'><title>nextbest policy comparison</title></head><body>"
        "<h1>Policies replayed over the same simulated period</h1>"
        f"{table.round(3).to_html()}<p><img src='{png.name}' alt='policy comparison chart'></p></body></html>")
    return png, html


def off_policy(settings: Settings, policy: ModelPolicy, period: Period, tables: dict[str, pd.DataFrame],
               sample: int | None = 100_000, seed: int = 7, window_days: int = 7,
               seen: pd.DataFrame | None = None) -> pd.DataFrame:
    """IPS, SNIPS and DR estimates of `policy` from the logged decisions in `tables["contacts"]`, next to the
    simulated truth when there is one (`off_policies` for one policy)."""
    return off_policies(settings, {policy.name: policy}, period, tables, sample, seed, window_days, seen)[policy.name]


def off_policies(settings: Settings, policies: dict[str, ModelPolicy], period: Period, tables: dict[str, pd.DataFrame],
                 sample: int | None = 100_000, seed: int = 7, window_days: int = 7,
                 seen: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per policy, IPS, SNIPS and DR estimates from the logged decisions in `tables["contacts"]`, by the estimator of
    `nextbest evaluate --logs` (`offpolicy.judge_choices`: reward = conversion within `window_days`, the label's
    window; DR's reward model cross-fitted over users, one for all policies), next to the simulated truth when
    there is one.

    At each logged decision a policy takes its best action by expected value among the actions open then
    (`logged_feasibility`: the logging policy's support), or no contact when none has positive value. The truth is
    the oracle's P(convert) of the policy's action at each judged send time (none on a company's own logs).
    `attrs["matched"]`: the judged decisions where the policy takes the logged action, the rows the estimates rest
    on; `attrs["dr_terms"]`: DR's per-decision terms, for paired differences (the same decisions for every policy).
    `seen`: every contact the users received (the whole contacts table), so the truth's fatigue at a judged decision
    counts the contacts before the judged log too; without it, only the log's own, and the truth of a decision early in
    the log forgets the week before it (too high: on the demo home the NBA's truth was 1.6 % high, benchmarks/RESULTS.md).
    `nextbest evaluate` and the retrain gate pass the whole contacts table.
    """
    from nextbest.training.uplift import UpliftConfig, build_frame

    log = tables["contacts"].reset_index(drop=True)
    if len(log) == 0:
        raise ValueError("no logged decisions with a complete outcome window to evaluate the policy on")
    for col, why in (("propensity", "each decision's probability under the policy that made it"),
                     ("converted_at", "the outcome to score")):
        if col not in log or log[col].isna().all():
            raise ValueError(f"the contact log has no `{col}` ({why}): off-policy evaluation needs it; "
                             "log it with every decision (the decision service does)")
    log = judged_log(log)
    rng = np.random.default_rng(seed)
    if sample is not None and len(log) > sample:
        log = log.iloc[np.sort(rng.choice(len(log), size=sample, replace=False))].reset_index(drop=True)
    users = pd.Index(period.user_ids).get_indexer(log["user_id"].astype(str))
    channels = list(period.channels["channel"].astype(str))
    n_c = len(channels)
    open_ = logged_feasibility(tables, log, period.offers, channels)
    # a point-in-time training-set read: through the offline store in force (Spark's too), as training reads
    data = build_frame(training_store(settings), {**tables, "contacts": log}, UpliftConfig(window_days=window_days))
    rows = pd.Index(log["contact_id"].astype(str)).get_indexer(data.frame["contact_id"].astype(str))
    greedy = {}
    for name, policy in policies.items():
        ev = np.where(open_, policy.ev[users], -np.inf).reshape(len(log), -1)
        greedy[name] = np.where(ev.max(axis=1) > 0, ev.argmax(axis=1), -1)[rows]
    offer_ids = period.offers["offer_id"].astype(str).to_numpy()
    names = np.asarray(channels, dtype=object)
    chosen = {name: action_names(offer_ids[g.clip(0) // n_c], names[g.clip(0) % n_c], g >= 0) for name, g in greedy.items()}
    judged = judge_choices(data, chosen, LogsConfig(seed=seed))
    truth = {} if period.truth is None else {
        name: float(t.mean()) for name, t in simulated_truths(
            period, log.iloc[rows], greedy, log if seen is None else seen,
            hours={name: policy.hours[users[rows]] for name, policy in policies.items()}).items()}
    out = {}
    for name in policies:
        row = judged.loc[name]
        table = pd.DataFrame([{"method": method, "value": float(row[key]), "ci_low": float(row[f"{key}_low"]),
                               "ci_high": float(row[f"{key}_high"]), "n": len(data.frame),
                               "effective_n": float(row["effective_n"]), "se": float(row[f"{key}_se"]),
                               "se_rows": float(row[f"{key}_se_rows"]), "users": int(row["clusters"])}
                              for method, key in (("IPS", "ips"), ("SNIPS", "snips"), ("DR", "dr"))])
        table.attrs["matched"] = int(row["matched"])
        table.attrs["dr_terms"] = judged.attrs["dr_terms"][name]
        table.attrs["users"] = judged.attrs["users"]  # each term's user: paired differences cluster by it
        if name in truth:
            table["simulated_truth"] = truth[name]
            table["error"] = (table["value"] - truth[name]) / truth[name]
        out[name] = table
    return out


def simulated_truths(period: Period, decisions: pd.DataFrame, picks: dict[str, np.ndarray],
                     seen: pd.DataFrame | None = None,
                     hours: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per policy, each decision's truth: the oracle's P(convert within 7 d) of the policy's pick (flat offer x channel
    index in the period's order, -1 = no contact: the user's organic purchase) when it is sent.

    When it is sent: at the decision's logged `sent_at`, except on a decision the service logged (a non-null `refused`)
    that did not send on the picked channel, when `hours` (per policy, each decision's local send hour per channel)
    are given: then at the first instant from the logged time at the policy's own hour for the channel, as the
    service would have sent it. The service logs a hold-out or "no action" decision at the decision's instant (06:00
    UTC in `nextbest loop`: the night in the Americas), not at any send hour, and its sends at its send-time model's
    hour, which is the reward the estimates see.

    The user's fatigue at the decision (`Situation.recent`, as the world drew the outcomes) counts the treated
    contacts in `seen` in the 7 x 24 h before it: pass every contact the users received, the decisions among them
    (matched by `contact_id`); default: the decisions' own.
    """
    from nextbest.simulation.response import recent_contacts
    from nextbest.simulation.truth import Oracle

    seen = decisions if seen is None else seen
    # Nanoseconds: the oracle reads int64 instants as ns (a column of second-resolution Timestamps is not).
    sent_at = pd.to_datetime(decisions["sent_at"], utc=True).dt.as_unit("ns").reset_index(drop=True)
    # Only the judged users' contacts of the week before the first decision on can tire them: a small slice of a
    # company's log to count in.
    keep = seen["user_id"].astype(str).isin(set(decisions["user_id"].astype(str)))
    keep &= pd.to_datetime(seen["sent_at"], utc=True) >= sent_at.min() - pd.Timedelta(days=7)
    seen = seen[keep.to_numpy()].reset_index(drop=True)
    tired = pd.Series(recent_contacts(seen), index=seen["contact_id"].astype(str).to_numpy())
    recent = tired.reindex(decisions["contact_id"].astype(str))
    if recent.isna().any():
        raise ValueError("every judged decision must be among the contacts `seen` (matched by contact_id)")
    recent = recent.to_numpy(dtype=np.int64)
    oracle = Oracle(period.truth, period.offers)
    u = pd.Index(period.user_ids).get_indexer(decisions["user_id"].astype(str))
    offer_ids = period.offers["offer_id"].astype(str).to_numpy()
    channels = period.channels["channel"].astype(str).to_numpy()
    organic = oracle.p_organic(u, sent_at)
    by_service = (decisions["refused"].notna() if "refused" in decisions else pd.Series(False, index=decisions.index)).to_numpy()
    logged_channel = decisions["channel"].astype(object).fillna("").astype(str).to_numpy()
    out = {}
    for name, pick in picks.items():
        pick = np.asarray(pick)
        p = organic.copy()
        treated = pick >= 0
        if treated.any():
            o, c = np.divmod(pick[treated], len(channels))
            at = pd.DatetimeIndex(sent_at[treated]).asi8
            if hours is not None and name in hours:
                elsewhere = by_service[treated] & (logged_channel[treated] != channels[c])
                hour = np.asarray(hours[name])[np.flatnonzero(treated), c]
                wait = (hour - oracle.local_hour(u[treated], at)) % 24  # hours until the policy's local send hour
                at = np.where(elsewhere, at + np.round(wait * 3_600e9).astype(np.int64), at)
            p[treated] = oracle.p_convert(u[treated], offer_ids[o], channels[c], at, recent_contacts=recent[treated])
        out[name] = p
    return out
