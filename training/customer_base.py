"""BG/NBD (Fader, Hardie and Lee 2005), the customer-base model of repeat purchase, as inputs every learner reads.

From three behaviour features a customer's purchase history is summarised as BG/NBD does: x repeat purchase days,
t_x the weeks from the first to the last purchase day, T the weeks since the first purchase. A BG/NBD fitted on
the training rows turns each summary into two inputs: the expected purchases in the label window
(log(1 + E[X(weeks)])) and P(alive). The encoder (training/encoding.py) fits it with its scales and computes the
inputs inside `codes`; the compiled path (training/compiled.py) computes them from the same user columns with the
same function here, so online decisions and offline scoring see the same values.

Serving imports this module: the fit's optimiser (scipy.optimize) is imported inside `fit_bgnbd` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

__all__ = ["BGNBD", "SUMMARY_COLUMNS", "INPUTS", "fit_bgnbd", "expected_purchases", "p_alive", "summaries",
           "base_inputs", "fit_inputs"]

# behaviour features (features/build.py `_repeat_purchase_sql`): purchase days (x + 1), T and t_x in days
SUMMARY_COLUMNS: tuple[str, ...] = ("purchase_days_all", "customer_age_days", "purchase_span_days")
INPUTS: tuple[str, ...] = ("bgnbd_expected", "bgnbd_p_alive")  # the columns the encoder appends
_MIN_REPEAT_ROWS = 30  # rows with a repeat purchase needed to fit the model; fewer (attribute tables): no inputs


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters (purchase rate ~ Gamma(r, alpha), dropout probability ~ Beta(a, b)); weeks."""

    r: float
    alpha: float
    a: float
    b: float


def _loglik(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, n: np.ndarray) -> float:
    r, alpha, a, b = np.exp(log_params)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return float(-(n * (a1 + a2 + np.logaddexp(a3, a4))).sum())


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> BGNBD:
    """Maximum-likelihood BG/NBD on customers with a first purchase (T > 0)."""
    from scipy import optimize

    seen = T > 0
    # Customers with the same (x, t_x, T) add the same term: one row per distinct summary, weighted by its count
    # (snapshots and short histories repeat them often), then a quasi-Newton search on log parameters.
    summary = pd.DataFrame({"x": x[seen], "t_x": t_x[seen], "T": T[seen]}).value_counts().reset_index()
    args = tuple(summary[c].to_numpy(dtype="float64") for c in ("x", "t_x", "T", "count"))
    result = optimize.minimize(_loglik, np.zeros(4), args=args, method="L-BFGS-B", bounds=[(-10, 10)] * 4)
    return BGNBD(*(float(v) for v in np.exp(result.x)))


def p_alive(m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """P(the customer is still active at T | x, t_x, T) (the paper's eq. 13; 1 without a repeat purchase)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        odds = (x > 0) * m.a / (m.b + x - 1) * ((m.alpha + T) / (m.alpha + t_x)) ** (m.r + x)
    return 1.0 / (1.0 + np.nan_to_num(odds, nan=0.0, posinf=1e300))


def expected_purchases(m: BGNBD, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weeks: float) -> np.ndarray:
    """Expected purchases in the next `weeks` given (x, t_x, T) (the paper's eq. 10); new customers (T = 0) get
    the population's expectation for a customer of age 0."""
    r, alpha, a, b = m.r, m.alpha, m.a, m.b
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, weeks / (alpha + T + weeks))
        head = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + weeks)) ** (r + x) * hyp)
        alive = 1 + (x > 0) * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return np.nan_to_num(head / alive, nan=0.0)


def summaries(days_all: np.ndarray, age_days: np.ndarray, span_days: np.ndarray) -> tuple[np.ndarray, ...]:
    """(x, t_x, T) in weeks from the behaviour features; a user who never bought has x = t_x = T = 0."""
    days_all = np.asarray(days_all, dtype="float64")
    bought = days_all > 0
    x = np.where(bought, days_all - 1, 0.0)
    return x, np.where(bought, np.asarray(span_days, dtype="float64") / 7, 0.0), \
        np.where(bought, np.asarray(age_days, dtype="float64") / 7, 0.0)


def base_inputs(params: dict[str, float], days_all: np.ndarray, age_days: np.ndarray,
                span_days: np.ndarray) -> dict[str, np.ndarray]:
    """The INPUTS per row from the three SUMMARY_COLUMNS, under fitted `params` (BGNBD's fields + `weeks`).

    A user who never bought gets 0 for both (not a customer yet: BG/NBD describes customers from their first
    purchase on); a missing summary gives NaN.
    """
    m = BGNBD(params["r"], params["alpha"], params["a"], params["b"])
    x, t_x, T = summaries(days_all, age_days, span_days)
    customer = T > 0
    expected = np.log1p(np.clip(expected_purchases(m, x, t_x, T, params["weeks"]), 0, None))
    alive = p_alive(m, x, t_x, T)
    unknown = np.isnan(np.asarray(days_all, dtype="float64")) | np.isnan(T)
    return {"bgnbd_expected": np.where(unknown, np.nan, np.where(customer, expected, 0.0)),
            "bgnbd_p_alive": np.where(unknown, np.nan, np.where(customer, alive, 0.0))}


def fit_inputs(frame: pd.DataFrame, weeks: float) -> dict[str, float] | None:
    """BG/NBD fitted on a training frame's summaries, as the encoder stores it (None: too few repeat buyers)."""
    values = [pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
              for c in SUMMARY_COLUMNS]
    ok = ~np.isnan(np.stack(values)).any(axis=0)
    x, t_x, T = summaries(*(v[ok] for v in values))
    if int((x > 0).sum()) < _MIN_REPEAT_ROWS:
        return None
    m = fit_bgnbd(x, t_x, T)
    if not all(np.isfinite([m.r, m.alpha, m.a, m.b])):
        return None
    return {"r": m.r, "alpha": m.alpha, "a": m.a, "b": m.b, "weeks": float(weeks)}
