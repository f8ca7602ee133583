"""The planned order of a study's runs.

- ``sequential``: each point's cycles back to back (p0c0, p0c1, p1c0, p1c1, ...).
- ``interleaved``: every point once per cycle, in design order (p0c0, p1c0, p0c1, p1c1, ...),
  so slow drift (temperature, other tenants) spreads over every point alike.
- ``shuffled``: every point once per cycle, in a shuffle of its own per cycle drawn from one
  generator seeded with ``seed``: the same seed gives the same order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def planned_order(
    points: Sequence[int], cycles: int, order: str, seed: int | None = None
) -> list[tuple[int, int]]:
    """(point, cycle) pairs in the order they run.

    Args:
        points: The valid points, in design order.
        cycles: Runs of each point.
        order: ``sequential``, ``interleaved`` or ``shuffled``.
        seed: The shuffle's seed (``shuffled`` only).
    """
    if order == "sequential":
        return [(point, cycle) for point in points for cycle in range(cycles)]
    if order == "interleaved":
        return [(point, cycle) for cycle in range(cycles) for point in points]
    if order == "shuffled":
        if seed is None:
            raise ValueError("a shuffled order needs a seed")
        rng = random.Random(seed)
        plan: list[tuple[int, int]] = []
        for cycle in range(cycles):
            shuffled = list(points)
            rng.shuffle(shuffled)
            plan.extend((point, cycle) for point in shuffled)
        return plan
    raise ValueError(f"unknown order {order!r}")
