"""Host energy: CPU package and DRAM energy from RAPL, through the Linux powercap sysfs tree.

Each RAPL zone is a directory ``intel-rapl:N`` (a CPU package, ``name`` = ``package-N``, or
``psys`` for the platform) with sub-zones ``intel-rapl:N:M`` (``core``, ``uncore``, ``dram``).
``energy_uj`` counts microjoules and wraps to 0 after ``max_energy_range_uj`` (about 262 kJ on
many Intel CPUs: minutes at server power). AMD CPUs (Zen and newer) expose the same tree.

Counted: every package and every ``dram`` sub-zone. Not counted: ``core`` and ``uncore``
(already inside their package) and ``psys`` (the whole platform, which includes the others).

The files are read at the session's marks and about once a second by the sampler's process,
so every wrap-around between two marks is seen. Each read is stamped right before it is made;
two processes reading within microseconds can still sort in the wrong order, so only a drop
of more than half the counter's range is a wrap (reads that close to the safe gap accrue less
than that), and a smaller drop is the two reads swapped: its negative difference cancels
against the next one's. Where the reads are too far apart for wraps to be certain, or the
energy found implies more than twice the zone's stated maximum power, the figure is null with
the reason. Since CVE-2020-8694 only root can read ``energy_uj``; a container sees
the tree only when it is mounted (``compose.yaml``). Unreadable files make host energy
"unavailable" with the reason, never 0.

The same code reads the real tree and the scripted one the tests build: ``root`` is a
setting (``LLEM_POWERCAP_ROOT``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_ROOT = Path("/sys/class/powercap")
_ZONE = re.compile(r"^intel-rapl:\d+(:\d+)?$")
#: RAPL's energy status updates about every millisecond: an edge read can miss that much.
RAPL_UPDATE_S = 0.001
#: Assumed bound of RAPL's own error against a wall meter (it is the CPU's estimate, and DRAM
#: is modelled rather than metered on some platforms); reported as the systematic part.
RAPL_SYSTEMATIC_REL = 0.05
#: Power assumed when a zone states no maximum, to bound the time between safe reads.
FALLBACK_MAX_POWER_W = 1000.0
#: A window's mean power above this many times the zone's stated maximum (its long-term
#: limit; the short-term one runs about a quarter higher) is no measurement: an arithmetic or
#: ordering fault, never published.
IMPLAUSIBLE_POWER_FACTOR = 2.0


@dataclass(frozen=True)
class RaplZone:
    """One counted zone.

    Attributes:
        key: Its directory name (``intel-rapl:0``, ``intel-rapl:0:2``).
        name: What it measures (``package-0``, ``dram``).
        kind: ``package`` or ``dram``.
        energy_path: Its ``energy_uj`` file.
        max_energy_range_uj: Where the counter wraps.
        max_power_w: The zone's maximum power, where it states one (for the wrap check).
    """

    key: str
    name: str
    kind: Literal["package", "dram"]
    energy_path: str
    max_energy_range_uj: int
    max_power_w: float | None

    @property
    def label(self) -> str:
        """``package-0``, or ``dram-0`` for the DRAM of package 0."""
        if self.kind == "dram":
            return f"dram-{self.key.split(':')[1]}"
        return self.name

    def safe_gap_s(self) -> float:
        """Longest gap between reads over which at most one wrap can hide."""
        power = self.max_power_w or FALLBACK_MAX_POWER_W
        return self.max_energy_range_uj / 1e6 / power / 2


@dataclass(frozen=True)
class HostProbe:
    """Which zones can be read here, or why none can."""

    zones: tuple[RaplZone, ...]
    reason: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.zones)


def _read_text(path: Path) -> str:
    with open(path) as f:
        return f.read().strip()


def _zone_dirs(root: Path) -> list[Path]:
    """Every ``intel-rapl:*`` directory under ``root`` (the flat ``/sys/class/powercap``
    listing or the nested ``/sys/devices/virtual/powercap`` tree), once each."""
    found: dict[str, Path] = {}

    def walk(directory: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir():
                continue
            path = Path(entry.path)
            if _ZONE.match(entry.name):
                found.setdefault(os.path.realpath(path), path)
            if depth < 3 and (entry.name == "intel-rapl" or _ZONE.match(entry.name)):
                walk(path, depth + 1)

    walk(root, 0)
    return sorted(found.values(), key=lambda p: [int(x) for x in p.name.split(":")[1:]])


def probe_host(root: Path = DEFAULT_ROOT) -> HostProbe:
    """The RAPL zones under ``root`` that this process can read.

    Unavailable with the reason when there is no tree (not Linux, no RAPL driver, or a
    container without the mount) or its energy files cannot be read (not root)."""
    if not root.is_dir():
        return HostProbe(
            (),
            f"{root} does not exist: no powercap tree here (a CPU or kernel without RAPL, or a "
            "container without the read-only mount of the host's powercap tree; see "
            "compose.yaml)",
        )
    zones: list[RaplZone] = []
    denied: list[str] = []
    for path in _zone_dirs(root):
        try:
            name = _read_text(path / "name")
        except OSError:
            continue
        top = path.name.count(":") == 1
        if top and name.startswith("package"):
            kind: Literal["package", "dram"] = "package"
        elif name == "dram":
            kind = "dram"
        else:
            continue  # core and uncore are inside their package; psys includes everything
        try:
            int(_read_text(path / "energy_uj"))
            max_range = int(_read_text(path / "max_energy_range_uj"))
        except PermissionError:
            denied.append(path.name)
            continue
        except (OSError, ValueError):
            continue
        try:
            max_power: float | None = int(_read_text(path / "constraint_0_max_power_uw")) / 1e6
        except (OSError, ValueError):
            max_power = None
        zones.append(
            RaplZone(
                key=path.name,
                name=name,
                kind=kind,
                energy_path=str(path / "energy_uj"),
                max_energy_range_uj=max_range,
                max_power_w=max_power or None,
            )
        )
    if zones:
        return HostProbe(tuple(zones))
    if denied:
        return HostProbe(
            (),
            f"the RAPL energy files under {root} ({', '.join(denied)}) are readable only by "
            "root (since CVE-2020-8694): run the service as root, or make them readable to its "
            "user on the host (README, 'Host energy')",
        )
    return HostProbe((), f"no readable RAPL package or DRAM zone under {root}")


def read_zones(zones: Sequence[RaplZone]) -> dict[str, int]:
    """Each zone's raw counter, microjoules; a zone whose read fails is left out."""
    out = {}
    for zone in zones:
        try:
            with open(zone.energy_path) as f:
                out[zone.key] = int(f.read())
        except (OSError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class ZoneEnergy:
    """One zone over a window."""

    zone: RaplZone
    energy_j: float
    edge_bound_j: float  # what the read at either edge can miss (one update, 1 uJ): +/-
    systematic_j: float  # bound of RAPL's own estimate against the truth: +/-
    wraps: int


def zone_energy(
    zone: RaplZone,
    reads: Sequence[tuple[float, int]],
    t0: float,
    t1: float,
) -> ZoneEnergy | str:
    """Energy of ``zone`` from ``t0`` to ``t1`` (both read times in ``reads``), counting
    wrap-arounds between consecutive reads; or why it cannot be known."""
    inside = sorted((t, v) for t, v in reads if t0 <= t <= t1)
    if len(inside) < 2 or inside[0][0] != t0 or inside[-1][0] != t1:
        return f"{zone.label} was not read at both edges of the window"
    total = 0
    wraps = 0
    longest = 0.0
    wrap_at = zone.max_energy_range_uj  # the counter runs 0..max, then starts again at 0
    for (ta, a), (tb, b) in itertools.pairwise(inside):
        longest = max(longest, tb - ta)
        if a - b > wrap_at // 2:
            wraps += 1
            total += b + wrap_at - a
        else:  # a small drop is two reads swapped: it cancels against the next difference
            total += b - a
    if longest > zone.safe_gap_s():
        return (
            f"{zone.label} was read {longest:.0f} s apart, long enough for its counter to wrap "
            f"more than once unseen (it wraps every {zone.max_energy_range_uj / 1e6:.0f} J)"
        )
    energy_j = total / 1e6
    window = t1 - t0
    mean_w = energy_j / window if window > 0 else 0.0
    most_w = IMPLAUSIBLE_POWER_FACTOR * (zone.max_power_w or FALLBACK_MAX_POWER_W)
    if mean_w > most_w or energy_j < 0:
        return (
            f"{zone.label}'s counter gave {energy_j:.0f} J over {window:.1f} s, a mean of "
            f"{mean_w:.0f} W, which the zone cannot draw (its stated maximum is "
            f"{zone.max_power_w or FALLBACK_MAX_POWER_W:.0f} W): its reads are inconsistent, "
            "so host energy is not published"
        )
    # Each edge may miss one update of the counter and resolves 1 uJ; the estimate's own
    # error against a wall meter is the systematic part.
    edge_j = mean_w * RAPL_UPDATE_S + 1e-6
    return ZoneEnergy(zone, energy_j, edge_j, energy_j * RAPL_SYSTEMATIC_REL, wraps)
