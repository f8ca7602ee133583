"""Host energy from RAPL, read through a powercap tree the tests script with the same code that
reads the real one: zones, wrap-arounds, and unavailable with the reason when unreadable."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from llem_client import EnergyConfig, HostEnergy
from llem_service.energy.acquisition import build_host
from llem_service.energy.figures import Span
from llem_service.energy.host import probe_host, zone_energy
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession
from llem_service.energy.publish import Publisher

from tests.energy_sections import energy_section
from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile, ScriptedSession
from tests.fake_powercap import ScriptedPowercap


@pytest.fixture
def tree(tmp_path: Path) -> ScriptedPowercap:
    return ScriptedPowercap(tmp_path / "powercap", packages=2)


@pytest.mark.parametrize("layout", ["class_root", "devices_root"])
def test_packages_and_dram_are_counted_once_core_uncore_and_psys_not(
    tree: ScriptedPowercap, layout: str
) -> None:
    probe = probe_host(getattr(tree, layout))

    assert probe.available
    assert [(z.label, z.key, z.kind) for z in probe.zones] == [
        ("package-0", "intel-rapl:0", "package"),
        ("dram-0", "intel-rapl:0:2", "dram"),
        ("package-1", "intel-rapl:1", "package"),
        ("dram-1", "intel-rapl:1:2", "dram"),
    ]
    assert probe.zones[0].max_power_w == 250.0


def test_a_missing_tree_says_how_a_container_gets_one(tmp_path: Path) -> None:
    probe = probe_host(tmp_path / "nothing")

    assert not probe.available
    assert probe.reason is not None
    assert "compose.yaml" in probe.reason


@pytest.fixture
def shared_tree() -> Iterator[ScriptedPowercap]:
    """A tree another user can walk (pytest's own tmp_path is private to its user)."""
    root = Path(tempfile.mkdtemp(prefix="llem-powercap-"))
    root.chmod(0o755)
    try:
        yield ScriptedPowercap(root / "powercap")
    finally:
        shutil.rmtree(root)


def _as_nobody(ask: Callable[[], str]) -> str:
    """``ask()`` in a forked child that has given up root (uid 65534)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no cleanup, no pytest, just the answer
        try:
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(write, ask().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        said = answer.read()
    os.waitpid(pid, 0)
    return said


def test_unreadable_counters_say_root_is_needed(shared_tree: ScriptedPowercap) -> None:
    for path in shared_tree.energy_files():
        path.chmod(0o400 if os.geteuid() == 0 else 0o000)
    if os.geteuid() == 0:  # root reads anything: ask as an unprivileged user instead
        reason = _as_nobody(lambda: probe_host(shared_tree.class_root).reason or "")
    else:
        reason = probe_host(shared_tree.class_root).reason or ""

    assert "readable only by root" in reason
    assert "CVE-2020-8694" in reason


def test_wrap_arounds_between_reads_are_counted(tree: ScriptedPowercap) -> None:
    (zone, *_) = probe_host(tree.class_root).zones
    top = zone.max_energy_range_uj
    reads = [(0.0, top - 10_000_000), (1.0, 20_000_000), (2.0, 80_000_000)]

    found = zone_energy(zone, reads, 0.0, 2.0)

    assert not isinstance(found, str)
    assert found.wraps == 1
    assert found.energy_j == pytest.approx(90.0)  # 10 J to the top, 20 J, then 60 J
    assert found.systematic_j == pytest.approx(90.0 * 0.05)
    assert found.edge_bound_j == pytest.approx(45.0 * 0.001 + 1e-6)  # one 1-ms update at 45 W


def test_two_reads_that_sort_in_the_wrong_order_are_no_wrap(tree: ScriptedPowercap) -> None:
    # 100 W for 10 s. A mark reads at 5.003 s; the sampler's poll stamped 5.000 s but read at
    # 5.005 s: sorted by stamp, the later value comes first. That drop is no wrap-around.
    (zone, *_) = probe_host(tree.class_root).zones

    def value(t: float) -> int:
        return round(t * 100.0 * 1e6)

    reads = [(0.0, value(0.0)), (5.002, value(5.003)), (5.000, value(5.005)), (10.0, value(10.0))]

    found = zone_energy(zone, reads, 0.0, 10.0)

    assert not isinstance(found, str)
    assert found.wraps == 0
    assert found.energy_j == pytest.approx(1000.0)


def test_a_window_that_implies_more_power_than_the_zone_can_draw_is_not_published(
    tree: ScriptedPowercap,
) -> None:
    (zone, *_) = probe_host(tree.class_root).zones  # 250 W at most

    found = zone_energy(zone, [(0.0, 0), (1.0, 1_000_000_000)], 0.0, 1.0)  # 1 kJ in 1 s

    assert isinstance(found, str)
    assert "cannot draw" in found


class TickingClock:
    """Moves on by a millisecond each time it is read: every NVML query takes time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t

    def wall(self) -> float:
        return self.t + 1.7e9

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_every_rapl_read_is_stamped_when_it_is_made(tree: ScriptedPowercap) -> None:
    clock = TickingClock()
    gpus = (FakeGpu(), FakeGpu(uuid="GPU-2"))
    meter = NvmlEnergyMeter(
        library=FakeNvml(gpus=gpus, clock=clock, wall=clock.wall),
        clock=clock, sleep=clock.sleep, wall=clock.wall, sampler="manual",
        powercap_root=str(tree.class_root),
    )  # fmt: skip
    session = meter.open([g.uuid for g in gpus], EnergyConfig(sample_interval_ms=10))
    assert isinstance(session, NvmlSession)
    engine = session.sampler._engine
    assert engine is not None

    # A mark reads the GPUs' counters first: its RAPL read comes after them.
    session.mark("a")
    (mark,) = session.marks
    assert mark.host_t_s is not None
    assert mark.host_t_s > mark.t_s + 0.002
    # The sampler lists the GPUs' processes before its RAPL read: the stamp is the read's.
    before = clock.t
    engine.poll_slow()
    (read_at, _), *_ = engine.host_reads
    assert read_at > before + 0.003
    session.close()


def test_reads_too_far_apart_to_count_wraps_give_no_figure(tree: ScriptedPowercap) -> None:
    (zone, *_) = probe_host(tree.class_root).zones

    found = zone_energy(zone, [(0.0, 0), (3600.0, 5_000_000)], 0.0, 3600.0)

    assert isinstance(found, str)
    assert "wrap more than once unseen" in found


def host_energy(
    tree: ScriptedPowercap, steps: list[tuple[float, float]], *, limit: float | None = None
) -> HostEnergy:
    """A session with ``powercap_root`` on the tree: for each (seconds, package watts) step
    the tree advances, then time passes (DRAM draws a tenth of the package). ``limit``:
    ``energy.max_relative_uncertainty``, where not the default."""
    gpu = FakeGpu(profile=PowerProfile(((100.0, 300.0),)))
    scripted = ScriptedSession([gpu], powercap_root=str(tree.class_root))
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    start = scripted.clock()
    for seconds, watts in steps:
        tree.add_j("intel-rapl:0", watts * seconds)
        tree.add_j("intel-rapl:0:2", watts * seconds / 10)
        scripted.run_for(seconds)
    scripted.mark("repeat_0_end")
    span = Span(start, start + 0.1, scripted.clock())
    record = scripted.close()
    if limit is not None:
        start_mark, end_mark = record.mark("warmup_end"), record.mark("repeat_0_end")
        host = build_host(record, start_mark, end_mark, 100, Publisher(limit))
        assert host is not None
        return host
    energy, _ = energy_section(record, [gpu.uuid], span, output_tokens=100)
    assert energy.host is not None
    return energy.host


def test_host_energy_over_the_measured_window_beside_the_gpus(tmp_path: Path) -> None:
    # Counters that wrap every 250 J: at 60 W a wrap every few seconds of the window (and a
    # 60 W maximum, so one read a second is often enough to count every wrap).
    tree = ScriptedPowercap(
        tmp_path / "powercap", max_energy_range_uj=250_000_000, max_power_w=60.0
    )

    host = host_energy(tree, [(1.0, 60.0)] * 10)

    assert host.available
    assert host.cpu_energy_j is not None
    assert host.dram_energy_j is not None
    assert host.energy_j is not None
    assert host.energy_per_output_token_j is not None
    assert host.cpu_energy_j.value == pytest.approx(600.0)
    assert host.dram_energy_j.value == pytest.approx(60.0)
    assert host.energy_j.value == pytest.approx(660.0)
    assert host.energy_per_output_token_j.value == pytest.approx(6.6)
    assert host.window_s == pytest.approx(10.0)
    (package, dram) = host.domains
    assert (package.name, package.wraps) == ("package-0", 2)
    assert (dram.name, dram.kind, dram.wraps) == ("dram-0", "dram", 0)
    assert package.mean_power_w == pytest.approx(60.0)
    # k = 2 over RAPL's own 5% (rectangular), one source for every zone, as any Estimate
    assert host.energy_j.systematic == pytest.approx(2 * 0.05 * 660 / 3**0.5)
    assert 0 < host.energy_j.random < 0.01 * 660
    assert host.energy_per_output_token_j.total == pytest.approx(host.energy_j.total / 100)


def test_host_energy_follows_the_null_rule_of_every_energy_figure(tmp_path: Path) -> None:
    tree = ScriptedPowercap(
        tmp_path / "powercap", max_energy_range_uj=250_000_000, max_power_w=60.0
    )

    # RAPL's own 5% (k = 2: 5.8%) is more than a 1% limit allows
    host = host_energy(tree, [(1.0, 60.0)] * 3, limit=0.01)

    assert host.available
    assert host.energy_j is None
    assert host.mean_power_w is None  # it would give the energy back
    assert host.cpu_energy_j is None
    assert host.energy_per_output_token_j is None
    assert all(d.energy_j is None and d.mean_power_w is None for d in host.domains)


def test_a_window_whose_reads_were_too_sparse_is_unavailable_with_the_reason(
    tmp_path: Path,
) -> None:
    tree = ScriptedPowercap(tmp_path / "powercap", max_energy_range_uj=250_000_000)

    # Nothing reads the counters for 4 s while at 250 W (the zone's maximum) they could wrap
    # every second.
    gpu = FakeGpu(profile=PowerProfile(((100.0, 300.0),)))
    scripted = ScriptedSession([gpu], powercap_root=str(tree.class_root))
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    start = scripted.clock()
    tree.add_j("intel-rapl:0", 240.0)
    scripted.clock.advance(4.0)  # no sampling rounds: no reads in between
    scripted.mark("repeat_0_end")
    span = Span(start, start + 0.1, scripted.clock())
    energy, _ = energy_section(scripted.close(), [gpu.uuid], span, output_tokens=1)

    assert energy.host is not None
    assert not energy.host.available
    assert energy.host.energy_j is None
    assert energy.host.reason is not None
    assert "4 s apart" in energy.host.reason


def test_host_energy_off_says_so() -> None:
    scripted = ScriptedSession([FakeGpu()])
    scripted.mark("load_start")
    scripted.mark("load_end")
    scripted.mark("warmup_end")
    start = scripted.clock()
    scripted.run_for(1.0)
    scripted.mark("repeat_0_end")
    span = Span(start, start + 0.1, scripted.clock())

    energy, _ = energy_section(scripted.close(), [FakeGpu().uuid], span, output_tokens=1)

    assert energy.host == HostEnergy(
        available=False, reason="host energy is off (LLEM_POWERCAP_ROOT is empty)"
    )
