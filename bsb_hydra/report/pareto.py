"""The Pareto frontier over a few objectives, some minimized (size, latency), some maximized
(accuracy). Pure functions over plain tuples: tested with Hypothesis (tests/test_report.py).

A point with a missing objective (None or NaN) is neither on the frontier nor used to dominate
others: the frontier is computed over the points that have every objective, and the caller shows
the rest as "n/a". Ties: equal points do not dominate each other, so all of them are on the
frontier."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

MIN, MAX = "min", "max"


def complete(point: Sequence[Optional[float]]) -> bool:
    return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and strictly better on one."""
    better = False
    for x, y, s in zip(a, b, senses):
        if s == MAX:
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def frontier(points: Sequence[Sequence[Optional[float]]], senses: Sequence[str]) -> List[Optional[bool]]:
    """For each point: True if on the frontier, False if dominated, None if an objective is missing."""
    idx = [i for i, p in enumerate(points) if complete(p)]
    out: List[Optional[bool]] = [None] * len(points)
    for i in idx:
        out[i] = not any(dominates(points[j], points[i], senses) for j in idx if j != i)
    return out
