"""Feature frames -> model matrices, with the category lists and scales stored so serving encodes identically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.training.customer_base import INPUTS, SUMMARY_COLUMNS, base_inputs, fit_inputs
from nextbest.training.derived import matched_columns, matched_values

__all__ = ["FrameEncoder", "fit_encoder"]

_MAX_CATEGORIES = 64  # rarer string values share the "unknown" code


@dataclass(frozen=True)
class FrameEncoder:
    """Column order, category lists of string columns and the scale of numeric columns.

    `columns` ends with the matched features (`training.derived`), then, with `customer_base`, BG/NBD's inputs
    (`training.customer_base`): `codes` computes both from the frame itself.
    """

    columns: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]  # string column -> known values (code = position)
    means: dict[str, float]
    stds: dict[str, float]
    matched: tuple[str, ...] = ()  # derived columns, computed at fit and predict time alike
    customer_base: dict[str, float] | None = None  # BG/NBD fitted on the training rows (+ `weeks`): INPUTS appended

    @property
    def derived(self) -> tuple[str, ...]:
        """Columns computed from other columns (matched features, BG/NBD inputs): never read from a frame."""
        return (*self.matched, *(INPUTS if self.customer_base else ()))

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.columns if c in self.categories]

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.columns if c not in self.categories]

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Float matrix in `columns` order: numbers as they are, strings as category codes (NaN if unknown)."""
        missing = [c for c in self.columns if c not in frame.columns and c not in self.derived]
        if missing:
            raise KeyError(f"frame lacks model input column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        derived = matched_values(frame, self.matched)
        if self.customer_base:
            derived |= base_inputs(self.customer_base, *(_numbers(frame[c]) for c in SUMMARY_COLUMNS))
        out = np.empty((len(frame), len(self.columns)), dtype="float64")
        for j, col in enumerate(self.columns):
            if col in derived:
                out[:, j] = derived[col]
            elif col in self.categories:
                out[:, j] = self.category_codes(frame[col], col)
            else:
                out[:, j] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        return out

    def category_codes(self, values: pd.Series, col: str) -> np.ndarray:
        """Codes of one string column; unknown or missing values are NaN."""
        index = pd.Index(self.categories[col])
        codes = index.get_indexer(values.astype(object).where(values.notna(), None).astype(str)).astype("float64")
        codes[codes < 0] = np.nan
        return codes

    def dense(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised numbers (missing -> 0) followed by one-hot strings: the input of the PyTorch models."""
        return self.dense_codes(self.codes(frame))

    def dense_codes(self, raw: np.ndarray) -> np.ndarray:
        """`dense` from the matrix `codes` returns (written in place into one float32 matrix: no extra copies)."""
        numeric = self.numeric
        num_idx = [self.columns.index(c) for c in numeric]
        num = self.scaled(raw[:, num_idx], numeric)
        out = np.zeros((len(raw), self.dense_width), dtype="float32")
        out[:, :len(numeric)] = num
        start = len(numeric)
        for c in self.categorical:
            code = raw[:, self.columns.index(c)]
            ok = ~np.isnan(code)
            out[np.flatnonzero(ok), start + code[ok].astype(int)] = 1.0
            start += len(self.categories[c])
        return out

    def scaled(self, num: np.ndarray, names: list[str]) -> np.ndarray:
        """Numeric codes (rows, len(names)) as `dense` gives them: standardised, missing -> 0, clipped to +-10
        (in place; float64 like the codes, cast to float32 by the caller)."""
        num -= np.array([self.means[c] for c in names])
        num /= np.array([self.stds[c] for c in names])
        np.nan_to_num(num, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(num, -10, 10, out=num)
        return num

    @property
    def dense_width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    def to_json(self) -> dict:
        return {"columns": list(self.columns), "categories": {k: list(v) for k, v in self.categories.items()},
                "means": self.means, "stds": self.stds, "matched": list(self.matched),
                "customer_base": self.customer_base}

    @classmethod
    def from_json(cls, data: dict) -> FrameEncoder:
        return cls(tuple(data["columns"]), {k: tuple(v) for k, v in data["categories"].items()},
                   {k: float(v) for k, v in data["means"].items()}, {k: float(v) for k, v in data["stds"].items()},
                   tuple(data.get("matched", ())), data.get("customer_base"))


def _numbers(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def fit_encoder(frame: pd.DataFrame, columns: list[str], request: tuple[str, ...] = (), matched: bool = True,
                customer_base_weeks: float | None = None) -> FrameEncoder:
    """Learn category lists (most frequent first) and numeric scales from a training frame.

    With `matched`, the matched features computable from `columns` + `request` are appended to the columns;
    `request` columns are read only to compute them (a model that embeds them itself passes them here).
    With `customer_base_weeks` (the label window) and the purchase-history columns among `columns`, a BG/NBD is
    fitted on these rows and its expected purchases in the window and P(alive) are appended too (none when too
    few rows have a repeat purchase, e.g. attribute tables without purchases).
    """
    derived = matched_columns([*columns, *request]) if matched else ()
    values = matched_values(frame, derived)
    base = fit_inputs(frame, customer_base_weeks) if customer_base_weeks and set(SUMMARY_COLUMNS) <= set(columns) \
        else None
    if base:
        values |= base_inputs(base, *(_numbers(frame[c]) for c in SUMMARY_COLUMNS))
        derived = (*derived, *INPUTS)
    categories: dict[str, tuple[str, ...]] = {}
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    for col in [*columns, *derived]:
        s = pd.Series(values[col]) if col in values else frame[col]
        if s.dtype == object or isinstance(s.dtype, (pd.CategoricalDtype, pd.StringDtype)):
            counts = s.dropna().astype(str).value_counts()
            categories[col] = tuple(counts.index[:_MAX_CATEGORIES])
        else:
            x = pd.to_numeric(s, errors="coerce").astype("float64")
            mu = float(x.mean()) if x.notna().any() else 0.0
            sd = float(x.std()) if x.notna().sum() > 1 else 1.0
            means[col], stds[col] = mu, (sd if np.isfinite(sd) and sd > 1e-9 else 1.0)
    matched_names = tuple(d for d in derived if d not in INPUTS)
    return FrameEncoder((*columns, *derived), categories, means, stds, matched_names, base)
