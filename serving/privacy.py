"""What may leave the service about its own state: error texts without paths, SQL or connection strings.

Answers (`/status`, `/reload`, a no-contact decision's reason) and the service log carry `describe(err)`
or `redact(text)`, never `str(err)`: a ledger error names its file, an MLflow error its SQL statement
and database URI. User ids in the service log are pseudonyms (`DecisionLog.pseudonym`, the same keyed
hash as the decision and outcome logs).
"""

from __future__ import annotations

import re

__all__ = ["redact", "redacted", "describe"]

_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]*")  # sqlite:////home/x/mlflow.db, redis://:secret@host
_SQL_BLOCK = re.compile(r"\[(?:SQL|parameters):.*?\]", re.DOTALL)  # SQLAlchemy's "[SQL: ...]" and "[parameters: ...]"
_SQL = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|REPLACE|WITH)\s[^\n]*")
_BACKGROUND = re.compile(r"\(Background on this error at: [^)]*\)")
# Two or more segments: "/decide" stays, "/home/ops/.nextbest/ledger.db" becomes "ledger.db".
_PATH = re.compile(r"(?<![\w.~-])(?:~|\.{1,2})?(?:/[^\s'\"/:;,()\[\]{}<>|]+){2,}/?")
MAX_CHARS = 1000


def redact(text: str) -> str:
    """`text` with URIs, SQL and file paths removed (a path keeps its last name, which says what it was)."""
    text = _BACKGROUND.sub("", _SQL_BLOCK.sub("", text))
    text = _URI.sub("<uri>", text)
    text = _SQL.sub("<sql>", text)
    text = _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return text.strip()[:MAX_CHARS]


def redacted(value: object) -> object:
    """`value` (JSON-like) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def describe(err: BaseException) -> str:
    """An exception as one safe line: its type and redacted message."""
    first = redact(str(err)).splitlines()
    return f"{type(err).__name__}: {first[0]}" if first else type(err).__name__
