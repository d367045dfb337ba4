"""Shared helpers of the bench scripts: warm-up and repeated timing (median, p99), the machine line,
a human table and the one closing line of JSON every bench script prints.

Bench modules run from the repository root as ``.venv/bin/python -m bench.<name> [--repeat N] [--quick]``;
the last line of their output is one JSON object (``{"bench": "<name>", ...}``) that scripts and
BENCHMARKS.md read.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one timed call, in milliseconds."""

    name: str
    samples_ms: NDArray[np.float64]

    @property
    def n(self) -> int:
        return int(self.samples_ms.size)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def mean_ms(self) -> float:
        return float(self.samples_ms.mean())

    @property
    def min_ms(self) -> float:
        return float(self.samples_ms.min())


def time_call(fn: Callable[[], object], *, repeat: int, warmup: int = 10, name: str = "") -> Timing:
    """Call ``fn`` ``warmup`` times untimed (caches, lazy tables, allocator), then ``repeat`` times
    timed one by one."""
    return time_interleaved({name: fn}, repeat=repeat, warmup=warmup)[0]


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, repeat: int, warmup: int = 10) -> list[Timing]:
    """Time several calls round-robin (a, b, c, a, b, c, ...) so that every one meets the same load
    on a shared machine and their ratio stays meaningful when the load changes during the run.

    Each is first called ``warmup`` times untimed (caches, lazy tables, allocator). The garbage
    collector is paused while timing, as ``timeit`` does, so that a collection triggered by other
    work does not land in one sample.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    calls = list(fns.values())
    for fn in calls:
        for _ in range(warmup):
            fn()
    samples = np.empty((len(calls), repeat), dtype=np.float64)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeat):
            for j, fn in enumerate(calls):
                start = time.perf_counter_ns()
                fn()
                samples[j, i] = (time.perf_counter_ns() - start) / 1e6
    finally:
        if was_enabled:
            gc.enable()
    return [Timing(name=name, samples_ms=row) for name, row in zip(fns, samples, strict=True)]


def time_once_s(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (for slow one-off work such as building tables)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the machine the figures come from."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {cpu_name()}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def format_table(rows: Sequence[Timing], *, reference: Timing | None = None) -> str:
    """A fixed-width table of timings: median, p99, min, samples, and the speed-up over ``reference``."""
    name_width = max([len("what"), *(len(t.name) for t in rows)])
    header = f"{'what':<{name_width}}  {'median ms':>10}  {'p99 ms':>10}  {'min ms':>10}  {'n':>6}"
    if reference is not None:
        header += f"  {'speed-up':>9}"
    lines = [header, "-" * len(header)]
    for t in rows:
        line = f"{t.name:<{name_width}}  {t.median_ms:>10.3f}  {t.p99_ms:>10.3f}  {t.min_ms:>10.3f}  {t.n:>6}"
        if reference is not None:
            line += f"  {reference.median_ms / t.median_ms:>8.1f}x"
        lines.append(line)
    return "\n".join(lines)


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float | np.floating):
        f = float(value)
        if not math.isfinite(f) or f == 0.0:
            return f
        # `digits` significant figures (never rounding into the integer part): enough for any timing
        return round(f, max(0, digits - 1 - math.floor(math.log10(abs(f)))))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def json_line(bench: str, figures: dict[str, Any], *, digits: int = 4) -> str:
    """The closing line of a bench script: one JSON object, ``bench`` first, floats rounded to
    ``digits`` significant figures (whole numbers kept)."""
    payload = {"bench": bench, **_rounded(figures, digits)}
    return json.dumps(payload, separators=(", ", ": "), allow_nan=False)


def parse_json_line(output: str) -> dict[str, Any]:
    """The figures of a bench run from its full output (its last non-empty line)."""
    last = [line for line in output.splitlines() if line.strip()][-1]
    payload = json.loads(last)
    if not isinstance(payload, dict) or "bench" not in payload:
        raise ValueError(f"the last line is not a bench JSON object: {last!r}")
    return payload


def bench_parser(description: str, *, default_repeat: int) -> argparse.ArgumentParser:
    """The command line every bench script shares: ``--repeat N`` and ``--quick``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--repeat", type=int, default=default_repeat, help=f"timed calls per measurement (default {default_repeat})"
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: few repeats, no slow extras")
    return parser
