"""Compiled model inputs: a trained encoder turned, once per model load, into array operations.

Training builds model inputs from DataFrames (`FrameEncoder.codes`). A decision must not: per request it
reads each user's features once (`UserColumns`), and each model's input matrix is assembled by indexing
those arrays and the offer x channel grid of the operator config (`RequestGrid`), encoded once per config
and model. `InputPlan.codes` gives the same matrix as `FrameEncoder.codes` on the equivalent frame, value
for value (NaN where NaN): tests/test_compiled.py checks it on real trained champions.

A row of a model input is (user index, grid cell, local hour): the cell names the offer and channel
(offer-major, `cell = offer * n_channels + channel`); models that read no offer use any offer's cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.training.customer_base import INPUTS, SUMMARY_COLUMNS, base_inputs
from nextbest.training.derived import _CATEGORY, _CHANNEL, _HOUR_SHARE, _keyed
from nextbest.training.encoding import FrameEncoder

__all__ = ["ContractError", "UserColumns", "RequestGrid", "Rows", "InputPlan", "GRID_COLUMNS"]

# The request columns the grid describes per cell; `local_hour` comes per row.
GRID_COLUMNS: tuple[str, ...] = ("offer_id", "offer_category", "offer_kind", "offer_value", "channel")


class ContractError(ValueError):
    """A model does not fit the features or request columns it would be given (e.g. a rebuilt FeatureService)."""


def _missing(v: object) -> bool:
    return v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and v != v)


def _strings(values: Sequence) -> list[str]:
    """Values as the encoder's pandas path sees them: `str(v)`, and missing values as the text 'None'."""
    return ["None" if _missing(v) else str(v) for v in values]


def _lookup(categories: Sequence[str], strings: list[str]) -> np.ndarray:
    """Category codes (position in `categories`) as float64; unknown values NaN."""
    return _codes({c: i for i, c in enumerate(categories)}, strings)


def _codes(index: dict[str, int], strings: list[str]) -> np.ndarray:
    codes = np.array([index.get(s, -1) for s in strings], dtype="float64")
    codes[codes < 0] = np.nan
    return codes


_LAYOUTS: dict[tuple[str, ...], dict[str, int]] = {}  # float feature names -> their column in `UserColumns.floats`
_GATHERS: dict[tuple[int, int], tuple] = {}  # (layout, plan's column list) -> gather indices


class UserColumns:
    """One request's user features (name -> one value per user), each converted once and shared by all models."""

    def __init__(self, users: dict[str, np.ndarray]):
        self.users = users
        self.n = len(users["user_id"])
        self._numbers: dict[str, np.ndarray] = {}
        self._strings: dict[str, list[str]] = {}
        self._codes: dict[tuple[str, int], np.ndarray] = {}
        self._floats: tuple[np.ndarray, dict[str, int]] | None = None
        self._matrices: dict[int, np.ndarray] = {}

    def floats(self) -> tuple[np.ndarray, dict[str, int]]:
        """Every float64 feature in one (U, F) matrix and each one's column: models gather theirs in one step."""
        if self._floats is None:
            names = tuple(k for k, v in self.users.items() if v.dtype == np.float64)
            matrix = np.stack([self.users[k] for k in names], axis=1) if names else np.zeros((self.n, 0))
            where = _LAYOUTS.get(names)
            if where is None:  # one dict per column layout, so what is gathered from it can be cached across requests
                if len(_LAYOUTS) > 16:
                    _LAYOUTS.clear()
                    _GATHERS.clear()
                where = _LAYOUTS[names] = {k: i for i, k in enumerate(names)}
            self._floats = (matrix, where)
        return self._floats

    def gather(self, names: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """(len(rows), len(names)) float64: `numbers(name)[rows]` for each name, float features in one gather."""
        matrix, where = self.floats()
        # `names` is a plan's own list and `where` the layout's dict: the same objects on every request.
        key = (id(where), id(names))
        found = _GATHERS.get(key)
        if found is None or found[0] is not names:
            ix = np.fromiter((where.get(n, -1) for n in names), dtype=np.int64, count=len(names))
            found = _GATHERS[key] = (names, np.maximum(ix, 0), np.flatnonzero(ix < 0))
        _, ix, others = found
        out = matrix[rows[:, None], ix[None, :]] if len(names) else np.zeros((len(rows), 0))
        for j in others.tolist():  # text, missing or absent features: converted one by one
            out[:, j] = self.numbers(names[j])[rows]
        return out

    def numbers(self, name: str) -> np.ndarray:
        """float64 per user; NaN where missing or not a number (a feature the request lacks is all NaN)."""
        out = self._numbers.get(name)
        if out is None:
            v = self.users.get(name)
            if v is None:
                out = np.full(self.n, np.nan)
            elif v.dtype == np.float64:
                out = v
            else:
                values = v.tolist()
                if all(x is None or type(x) in (bool, int, float) for x in values):  # flags such as consent: no pandas
                    out = np.array([np.nan if x is None else float(x) for x in values], dtype="float64")
                else:
                    out = pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            self._numbers[name] = out
        return out

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """(U, len(names)) float64."""
        out = self._matrices.get(id(names))
        if out is None:
            out = self._matrices[id(names)] = self.gather(names, np.arange(self.n))
        return out

    def codes(self, name: str, index: dict[str, int]) -> np.ndarray:
        """Category codes of one text feature given `index` (category -> code); unknown values NaN."""
        key = (name, id(index))
        out = self._codes.get(key)
        if out is None:
            strings = self._strings.get(name)
            if strings is None:
                v = self.users.get(name)
                strings = self._strings[name] = ["None"] * self.n if v is None else _strings(v.tolist())
            out = self._codes[key] = _codes(index, strings)
        return out


class RequestGrid:
    """The offer x channel cells of one operator config (offer-major), the request columns of each cell."""

    def __init__(self, offers: Sequence, channels: Sequence[str]):
        n_o, n_c = len(offers), len(channels)
        self.n_offers, self.n_channels = n_o, n_c
        self.columns: dict[str, np.ndarray] = {
            "offer_id": np.repeat(np.array([o.offer_id for o in offers], dtype=object), n_c),
            "offer_category": np.repeat(np.array([o.category for o in offers], dtype=object), n_c),
            "offer_kind": np.repeat(np.array([o.kind for o in offers], dtype=object), n_c),
            "offer_value": np.repeat(np.array([o.value for o in offers], dtype="float64"), n_c),
            "channel": np.tile(np.array(list(channels), dtype=object), n_o),
        }

    def request(self, cells: np.ndarray, hours: np.ndarray | None, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The request columns `names` of rows at `cells` and `hours` (what the pandas path puts in its frame)."""
        out = {n: self.columns[n][cells] for n in names if n != "local_hour"}
        if "local_hour" in names:
            out["local_hour"] = hours
        return out


@dataclass(frozen=True)
class Rows:
    """The rows of one model input: user index, grid cell and local hour per row, over one request's users."""

    users: UserColumns
    rows: np.ndarray  # (R,) index into the users
    cells: np.ndarray  # (R,) grid cell per row
    hours: np.ndarray | None  # (R,) local hour per row, or None for models without one
    grid: RequestGrid

    def __len__(self) -> int:
        return len(self.rows)


class InputPlan:
    """`FrameEncoder.codes` compiled against the columns a model is given: its FeatureService's features and
    its request columns. Raises ContractError at compile time when the encoder reads a column it will not get."""

    def __init__(self, encoder: FrameEncoder, feature_columns: Sequence[str], request_columns: Sequence[str]):
        self.encoder = encoder
        request = tuple(request_columns)
        frame_columns = [c for c in feature_columns if c not in request] + list(request)
        have = set(frame_columns)
        missing = [c for c in encoder.columns if c not in have and c not in encoder.derived]
        if missing:
            raise ContractError(f"the model reads column(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} that "
                                f"its FeatureService and request columns do not provide")
        needs = {"offer_affinity": "offer_category", "offer_affinity_rel": "offer_category", "hour_share": "local_hour",
                 "hour_gap": "local_hour"} | {name: "channel" for name in _CHANNEL}
        for name in encoder.matched:
            for col in (needs[name], *(("peak_open_hour",) if name == "hour_gap" else ())):
                if col not in have:
                    raise ContractError(f"matched feature {name!r} needs column {col!r}, which the model is not given")
        if encoder.customer_base and not set(SUMMARY_COLUMNS) <= have:
            raise ContractError(f"the model's BG/NBD inputs need the columns {', '.join(SUMMARY_COLUMNS)}, which the "
                                "model is not given")
        self.request = request
        # Per-key feature columns of the matched features, in the frame's column order (as `derived._pick` reads them).
        self.keyed = {prefix: _keyed(frame_columns, prefix) for prefix in (*_CATEGORY.values(), *_CHANNEL.values(), _HOUR_SHARE)}
        self._grid_key: int | None = None
        self._grid_codes: dict[str, np.ndarray] = {}
        # Output columns by source, so `codes` fills each group in one step.
        kinds = {}
        for j, col in enumerate(encoder.columns):
            kinds[j] = "matched" if col in encoder.matched else "base" if encoder.customer_base and col in INPUTS else \
                "hour" if col == "local_hour" and col in request else \
                "request" if col in request else "category" if col in encoder.categories else "number"
        self._numbers = [j for j, k in kinds.items() if k == "number"]
        self._number_names = [encoder.columns[j] for j in self._numbers]
        self._others = [(j, encoder.columns[j], k) for j, k in kinds.items() if k != "number"]
        self._index = {col: {c: i for i, c in enumerate(cats)} for col, cats in encoder.categories.items()}

    def _encoded_grid(self, grid: RequestGrid) -> dict[str, np.ndarray]:
        """Request columns and matched-feature keys per grid cell, for this encoder (cached per grid)."""
        if self._grid_key == id(grid):
            return self._grid_codes
        enc = self.encoder
        out: dict[str, np.ndarray] = {}
        for col in self.request:
            if col == "local_hour":
                continue
            values = grid.columns[col]
            if col in enc.categories:
                out[col] = _lookup(enc.categories[col], _strings(values.tolist()))
            else:
                out[col] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for prefix, key in (("aff_", "offer_category"), *((p, "channel") for p in _CHANNEL.values())):
            if key in grid.columns:
                suffixes = {c[len(prefix):]: i for i, c in enumerate(self.keyed[prefix])}
                keys = grid.columns[key].tolist()
                out[f"key:{prefix}"] = np.array([suffixes.get(str(k), -1) for k in keys], dtype="int64")
                out[f"none:{prefix}"] = np.array([_missing(k) for k in keys], dtype=bool)
        self._grid_key, self._grid_codes = id(grid), out
        return out

    def codes(self, x: Rows) -> np.ndarray:
        """The encoder's float matrix for these rows, in `encoder.columns` order."""
        # The user's own columns once per user, then one row copy per input row; the per-row columns after.
        out = self.user_codes(x.users).take(x.rows, axis=0)
        for j, values in self.row_codes(x).items():
            out[:, j] = values
        return out

    @property
    def row_columns(self) -> list[int]:
        """Positions in `encoder.columns` whose value depends on the row's offer, channel or hour, not the user alone."""
        return [j for j, _, kind in self._others if kind not in ("category", "base")]

    def user_codes(self, users: UserColumns) -> np.ndarray:
        """(U, columns): the columns that depend on the user alone, once per user; the `row_columns` are NaN."""
        per_user = np.full((users.n, len(self.encoder.columns)), np.nan, dtype="float64")
        if self._numbers:
            per_user[:, self._numbers] = users.gather(self._number_names, np.arange(users.n))
        base = base_inputs(self.encoder.customer_base, *(users.numbers(c) for c in SUMMARY_COLUMNS)) \
            if self.encoder.customer_base else {}
        for j, col, kind in self._others:
            if kind == "category":
                per_user[:, j] = users.codes(col, self._index[col])
            elif kind == "base":  # per user, as `FrameEncoder.codes` computes them per row from the same columns
                per_user[:, j] = base[col]
        return per_user

    def row_codes(self, x: Rows) -> dict[int, np.ndarray]:
        """The `row_columns` of these rows: position in `encoder.columns` -> one value per row."""
        g = self._encoded_grid(x.grid)
        matched = self._matched(x, g) if self.encoder.matched else {}
        out: dict[int, np.ndarray] = {}
        for j, col, kind in self._others:
            if kind == "matched":
                out[j] = matched[col]
            elif kind == "hour":
                out[j] = x.hours
            elif kind == "request":
                out[j] = g[col][x.cells]
        return out

    def _pick(self, x: Rows, prefix: str, idx: np.ndarray, missing: np.ndarray, default: float) -> np.ndarray:
        """The user's `prefix + key` feature per row (`derived._pick`): `idx` the key's column, -1 for none."""
        out = np.full(len(x), default, dtype="float64")
        hit = idx >= 0
        if hit.any():
            values = x.users.matrix(self.keyed[prefix])
            out[hit] = values[x.rows[hit], idx[hit]]
        out[missing] = np.nan
        return out

    def _matched(self, x: Rows, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.encoder.matched
        new: dict[str, np.ndarray] = {}
        if "offer_affinity" in names or "offer_affinity_rel" in names:
            aff = self._pick(x, "aff_", g["key:aff_"][x.cells], g["none:aff_"][x.cells], 0.0)
            new["offer_affinity"] = aff
            top = x.users.matrix(self.keyed["aff_"]).max(axis=1, initial=0.0)[x.rows]
            rel = np.divide(aff, top, out=np.zeros_like(aff), where=top > 0)
            rel[np.isnan(aff)] = np.nan
            new["offer_affinity_rel"] = rel
        for name, prefix in _CHANNEL.items():
            if name in names:
                new[name] = self._pick(x, prefix, g[f"key:{prefix}"][x.cells], g[f"none:{prefix}"][x.cells], np.nan)
        if "hour_share" in names or "hour_gap" in names:
            hours = x.hours
            ok = np.isfinite(hours)
            if "hour_share" in names:
                suffixes = {c[len(_HOUR_SHARE):]: i for i, c in enumerate(self.keyed[_HOUR_SHARE])}
                by_hour = np.array([suffixes.get(f"{h:02d}", -1) for h in range(24)], dtype="int64")
                idx = by_hour[np.where(ok, np.nan_to_num(hours), 0).astype("int64") % 24]
                new["hour_share"] = self._pick(x, _HOUR_SHARE, np.where(ok, idx, -1), ~ok, np.nan)
            if "hour_gap" in names:
                gap = np.abs(hours - x.users.numbers("peak_open_hour")[x.rows]) % 24
                new["hour_gap"] = np.minimum(gap, 24 - gap)
        return {n: new[n] for n in names}
