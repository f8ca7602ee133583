"""The time-energy frontier of a study, and the cheapest point that meets latency targets.

Points are compared on their aggregated rows (mean over cycles). Energy is J per output token:
baseline-adjusted when every point has it (idle power is a host constant, not a cost of the
configuration), raw otherwise. A point is on a frontier when no other point is at least as
good on both axes and better on one.
"""

from __future__ import annotations

from collections.abc import Sequence

from llem_client import ParetoTargets, StudyPareto, StudyResults, StudyRow

RAW = "energy_per_output_token_j"
ADJUSTED = "adjusted_energy_per_output_token_j"

#: Target -> (figure, whether larger is better).
_TARGETS: dict[str, tuple[str, bool]] = {
    "max_ttft_p90_s": ("ttft_p90_s", False),
    "max_itl_p90_s": ("itl_p90_s", False),
    "min_tokens_per_s": ("tokens_per_s", True),
}


def pareto(results: StudyResults, targets: ParetoTargets) -> StudyPareto:
    """The frontiers of ``results``' point rows, and the answer to ``targets``."""
    points = [row for row in results.rows if row.kind == "point"]
    metric = _energy_metric(points)
    energetic = [p for p in points if metric is not None and getattr(p, metric) is not None]
    by_throughput = _frontier(energetic, metric, "tokens_per_s", larger_is_better=True)
    by_ttft = _frontier(energetic, metric, "ttft_p90_s", larger_is_better=False)

    meeting = [p for p in points if _shortfall(p, targets) == 0.0]
    best = None
    closest = None
    if metric is None:
        message = _no_energy(points, meeting)
    elif meeting and any(getattr(p, metric) is not None for p in meeting):
        best = min(
            (p for p in meeting if getattr(p, metric) is not None),
            key=lambda p: (getattr(p, metric), p.point),
        )
        message = (
            f"point {best.point} ({_describe(best, results.swept_fields)}) has the lowest "
            f"{_label(metric)} of the {len(meeting)} point(s) that meet the targets: "
            f"{getattr(best, metric):.4g} J/token at {best.tokens_per_s:.4g} tokens/s"
        )
    elif points:
        closest = min(points, key=lambda p: (_shortfall(p, targets), p.point))
        message = (
            f"none of the {len(points)} points meets the targets; the closest is point "
            f"{closest.point} ({_describe(closest, results.swept_fields)}): "
            + _misses(closest, targets)
        )
    else:
        message = "no point has finished yet"
    return StudyPareto(
        study_id=results.study_id,
        energy_metric=metric,
        targets=targets,
        points=points,
        frontier_vs_tokens_per_s=[p.point for p in by_throughput],
        frontier_vs_ttft_p90=[p.point for p in by_ttft],
        meeting_targets=[p.point for p in meeting],
        best=best,
        closest=closest,
        message=message,
    )


def _energy_metric(points: Sequence[StudyRow]) -> str | None:
    if points and all(p.adjusted_energy_per_output_token_j is not None for p in points):
        return ADJUSTED
    if any(p.energy_per_output_token_j is not None for p in points):
        return RAW
    return None


def _frontier(
    points: Sequence[StudyRow], energy: str | None, axis: str, *, larger_is_better: bool
) -> list[StudyRow]:
    """The points no other point dominates on (energy, ``axis``), ordered along ``axis``."""
    if energy is None:
        return []
    sign = -1.0 if larger_is_better else 1.0
    # Both axes as "smaller is better"; sorted by energy, a point is on the frontier when it
    # beats every cheaper point on the other axis (or ties the frontier point before it).
    keyed = sorted(
        (
            (float(getattr(p, energy)), sign * float(getattr(p, axis)), p.point, p)
            for p in points
            if getattr(p, axis) is not None
        ),
        key=lambda item: item[:3],
    )
    frontier: list[StudyRow] = []
    best = float("inf")
    last: tuple[float, float] | None = None
    for e, a, _, p in keyed:
        if a < best or (e, a) == last:
            frontier.append(p)
            best, last = a, (e, a)
    return sorted(frontier, key=lambda p: (float(getattr(p, axis)), p.point))


def _shortfall(point: StudyRow, targets: ParetoTargets) -> float:
    """How far ``point`` misses the targets: the sum of relative shortfalls (0: meets all). A
    figure the point lacks misses its target by 1 (100%)."""
    total = 0.0
    for name, (figure, larger_is_better) in _TARGETS.items():
        limit = getattr(targets, name)
        if limit is None:
            continue
        value = getattr(point, figure)
        if value is None:
            total += 1.0
        elif larger_is_better and value < limit:
            total += (limit - value) / limit
        elif not larger_is_better and value > limit:
            total += (value - limit) / limit
    return total


def _misses(point: StudyRow, targets: ParetoTargets) -> str:
    parts = []
    for name, (figure, larger_is_better) in _TARGETS.items():
        limit = getattr(targets, name)
        value = getattr(point, figure)
        if limit is None:
            continue
        if value is None:
            parts.append(f"{figure} was not measured (target {limit:g})")
        elif (value < limit) if larger_is_better else (value > limit):
            off = abs(value - limit) / limit
            side = "under" if larger_is_better else "over"
            parts.append(f"{figure} {value:.4g} against {limit:g} ({off:.0%} {side})")
    return "; ".join(parts)


def _no_energy(points: Sequence[StudyRow], meeting: Sequence[StudyRow]) -> str:
    return (
        f"no point has an energy figure (the service measured no energy: see the results' "
        f"warnings), so there is no time-energy frontier and no lowest-energy point; "
        f"{len(meeting)} of {len(points)} point(s) meet the targets"
    )


def _label(metric: str) -> str:
    return "baseline-adjusted J/token" if metric == ADJUSTED else "raw J/token"


def _describe(point: StudyRow, fields: Sequence[str]) -> str:
    shown = [f"{name}={point.values.get(name)!r}" for name in fields]
    return ", ".join(shown) or f"config {point.config_hash}"
