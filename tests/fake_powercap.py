"""A scripted powercap tree: the files Linux's RAPL driver exposes, written by a test.

Laid out as the kernel does: the zones nested under ``devices/intel-rapl`` (what
``/sys/devices/virtual/powercap`` holds, and what a container mounts) and a flat ``class``
directory of symlinks to every zone and sub-zone (what ``/sys/class/powercap`` holds). The
service reads either with the same code it uses on a real host (``LLEM_POWERCAP_ROOT``).

Each package has ``core``, ``uncore`` and ``dram`` sub-zones; a ``psys`` zone covers the
platform. Counters are microjoules and wrap at ``max_energy_range_uj``, as RAPL's do.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

#: A common Intel value: 2^32 energy units of 61 uJ.
MAX_ENERGY_RANGE_UJ = 262_143_328_850


class ScriptedPowercap:
    """Zones under ``root``, counters that tests advance.

    Args:
        root: An empty directory.
        packages: CPU packages (``intel-rapl:0``..).
        dram: Give each package a ``dram`` sub-zone.
        max_energy_range_uj: Where every counter wraps.
        max_power_w: Each package's and sub-zone's ``constraint_0_max_power_uw``.
    """

    def __init__(
        self,
        root: Path,
        *,
        packages: int = 1,
        dram: bool = True,
        max_energy_range_uj: int = MAX_ENERGY_RANGE_UJ,
        max_power_w: float = 250.0,
    ) -> None:
        self.root = root
        self.devices_root = root / "devices"
        self.class_root = root / "class"
        self.max_energy_range_uj = max_energy_range_uj
        self.class_root.mkdir(parents=True)
        control = self.devices_root / "intel-rapl"
        self.zones: dict[str, Path] = {}
        for p in range(packages):
            package = self._zone(control, f"intel-rapl:{p}", f"package-{p}", max_power_w)
            for m, name in enumerate(["core", "uncore", *(["dram"] if dram else [])]):
                self._zone(package, f"intel-rapl:{p}:{m}", name, max_power_w)
        self._zone(control, f"intel-rapl:{packages}", "psys", None)

    def _zone(self, parent: Path, key: str, name: str, max_power_w: float | None) -> Path:
        path = parent / key
        path.mkdir(parents=True)
        (path / "name").write_text(f"{name}\n")
        (path / "energy_uj").write_text("0\n")
        (path / "max_energy_range_uj").write_text(f"{self.max_energy_range_uj}\n")
        if max_power_w is not None:
            (path / "constraint_0_max_power_uw").write_text(f"{round(max_power_w * 1e6)}\n")
        os.symlink(os.path.relpath(path, self.class_root), self.class_root / key)
        self.zones[key] = path
        return path

    def read_uj(self, key: str) -> int:
        return int((self.zones[key] / "energy_uj").read_text())

    def set_uj(self, key: str, value: int) -> None:
        # Whole at once (write, then rename): a reader in another process never sees the file
        # truncated and half written, as it never does in sysfs.
        staged = self.zones[key] / ".energy_uj"
        staged.write_text(f"{value}\n")
        os.replace(staged, self.zones[key] / "energy_uj")

    def add_j(self, key: str, joules: float) -> None:
        """The zone drew ``joules``: its counter advances, wrapping as RAPL's does."""
        value = self.read_uj(key) + round(joules * 1e6)
        self.set_uj(key, value % self.max_energy_range_uj)

    def energy_files(self) -> list[Path]:
        return [path / "energy_uj" for path in self.zones.values()]


class SteadyDraw:
    """A host drawing steady power while a live experiment runs: a process of its own advances
    the counters every ``period_s`` (RAPL's own update is about 1 ms; the reader only sees the
    counter at its reads, so a coarser step changes nothing but the quantisation).

    A process, not a thread: hardware updates RAPL whatever the test does, and a thread of the
    test's process waited for its GIL under load, so the counters fell behind by a tenth of a
    second at a time (host energy 6% under the draw in CI).

    Use as a context manager; ``watts`` maps zone keys (``intel-rapl:0``, ``intel-rapl:0:2``)
    to the power each draws.
    """

    def __init__(
        self, tree: ScriptedPowercap, watts: dict[str, float], period_s: float = 0.005
    ) -> None:
        context = multiprocessing.get_context("spawn")  # the test's process has threads
        self._stop = context.Event()
        self._process = context.Process(
            target=_draw, args=(tree, dict(watts), period_s, self._stop), name="steady-rapl"
        )

    def __enter__(self) -> SteadyDraw:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)


def _draw(
    tree: ScriptedPowercap, watts: dict[str, float], period_s: float, stop: EventType
) -> None:
    last = time.monotonic()
    while not stop.wait(period_s):
        now = time.monotonic()
        for key, power_w in watts.items():
            tree.add_j(key, power_w * (now - last))
        last = now
