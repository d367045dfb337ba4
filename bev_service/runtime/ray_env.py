"""How this project starts Ray (replay on Ray Data, serving on Ray Serve): offline, its usage statistics off.

Ray's usage-statistics collector phones home and its threads outlive a run in the driver's process (querying a
Prometheus that is not there); both engines call ``ray_environment()`` before Ray is imported. A variable set in
the environment wins.
"""

from __future__ import annotations

import os

RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}


def ray_environment() -> None:
    """Sets ``RAY_ENVIRONMENT`` where the environment leaves it unset (before Ray starts in this process)."""
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
