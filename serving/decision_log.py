"""Append-only JSON-lines logs of decisions and outcomes, with user ids replaced by a keyed hash.

The logs are training and evaluation data that get copied around (notebooks, laptops, tickets), so
they hold pseudonyms, never raw ids: whoever holds `pseudonym.key` can pseudonymise the feature
store's ids the same way to join them, and nobody else can name a user from a log. The service log
uses the same pseudonyms (`DecisionLog.pseudonym`) where it mentions a user.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

__all__ = ["DecisionLog", "pseudonym"]


def pseudonym(key: bytes, user_id: str) -> str:
    """A stable pseudonym: HMAC-SHA256 of the user id, so logs join per user without naming anyone."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:24]


def _key(path: Path) -> bytes:
    """The secret key, created once (mode 600) next to the logs; losing it unlinks old logs from users."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


class DecisionLog:
    """decisions.jsonl and outcomes.jsonl in `log_dir`; each record one line, flushed at once."""

    def __init__(self, log_dir: Path):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = _key(self.dir / "pseudonym.key")
        self._lock = threading.Lock()

    def _append(self, name: str, records: list[dict]) -> None:
        lines = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        # One O_APPEND write per call: the service's workers (processes) append to the same file, and a single
        # write lands whole at the end, never interleaved with another worker's lines.
        with self._lock:
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def pseudonym(self, user_id: str) -> str:
        """The one way a user id is written anywhere the service logs: its keyed hash."""
        return pseudonym(self.key, user_id)

    def close(self) -> None:
        """Wait for a write in progress, then fsync both logs: what was logged survives a power loss after stop."""
        with self._lock:
            for name in ("decisions.jsonl", "outcomes.jsonl"):
                path = self.dir / name
                if path.exists():
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def decisions(self, records: list[dict]) -> None:
        """Log decisions; `user_id` is replaced by its pseudonym."""
        self._append("decisions.jsonl", [{**r, "user_id": self.pseudonym(r["user_id"])} for r in records])

    def outcome(self, record: dict) -> None:
        self._append("outcomes.jsonl", [{**record, "user_id": self.pseudonym(record["user_id"])}])
