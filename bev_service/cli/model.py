"""Scaffold: filled in by the work on this command group (kept importable meanwhile)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Adds nothing yet."""
