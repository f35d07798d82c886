"""The one rich console of the command line: wide tables in logs and CI output, where stdout is not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["console"]

console = Console(width=None if sys.stdout.isatty() else 150)
