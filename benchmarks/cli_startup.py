"""Start-up cost of ``llem-client``: what ``import llem_client.cli`` pulls in and how long it takes.

The CLI promises that ``--help`` (and importing the CLI module) never loads httpx, pydantic,
PyYAML or rich; those are imported by the commands that need them. This script checks that
promise and records the figures:

- the cumulative import time of ``llem_client.cli`` from ``python -X importtime`` (median over
  the runs), and which heavy modules were imported (must be none);
- the wall time of ``llem-client --help`` as a subprocess, median and p90, next to the floor
  (``python -c pass``) and the heavy path (``import llem_client; llem_client.Client``).

Usage::

    python benchmarks/cli_startup.py [--runs 20] [--out-dir benchmarks/results]

It writes ``cli_startup.json`` and ``cli_startup.md`` to the output directory and exits 1 if a
heavy module was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HEAVY_MODULES = ("httpx", "pydantic", "rich", "yaml")
WARMUP_RUNS = 2


def child_env(pycache_dir: str | None) -> dict[str, str]:
    """The environment of the measured processes.

    With ``pycache_dir``, bytecode is written to and read from that directory (so the repository
    stays clean) and, after the warm-up runs, every module loads from cache, as in an install
    made by pip. Without it, bytecode is not written, so the project's own modules (an editable
    install) are compiled from source at every start: the worst case of a developer checkout.
    """
    env = dict(os.environ)
    if pycache_dir is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache_dir
    return env


def importtime_us(python: str, env: dict[str, str]) -> tuple[int, set[str]]:
    """Cumulative import time of ``llem_client.cli`` in microseconds, and every module imported.

    ``-X importtime`` writes ``import time: self [us] | cumulative | imported package`` lines
    to stderr, nested modules indented under their importer.
    """
    done = subprocess.run(
        [python, "-X", "importtime", "-c", "import llem_client.cli"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    cumulative: int | None = None
    modules: set[str] = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, _, fields = line.partition("import time:")
        _self_us, cumulative_us, name = (field.strip() for field in fields.split("|"))
        modules.add(name)
        if name == "llem_client.cli":
            cumulative = int(cumulative_us)
    if cumulative is None:
        raise RuntimeError("llem_client.cli is missing from the -X importtime output")
    return cumulative, modules


def wall_times_s(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall time of ``command`` as a subprocess, ``runs`` times after `WARMUP_RUNS` unrecorded."""
    times = []
    for i in range(WARMUP_RUNS + runs):
        start = time.perf_counter()
        subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env
        )
        elapsed = time.perf_counter() - start
        if i >= WARMUP_RUNS:
            times.append(elapsed)
    return times


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile, interpolated between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p90_ms": round(percentile(values, 0.9) * 1000, 1),
        "min_ms": round(min(values) * 1000, 1),
    }


def cli_command(python: str) -> list[str]:
    """The installed ``llem-client`` script next to ``python``, else ``python -m``."""
    script = Path(python).parent / "llem-client"
    if script.exists():
        return [str(script)]
    found = shutil.which("llem-client")
    return [found] if found else [python, "-m", "llem_client.cli"]


def import_figures(python: str, runs: int, env: dict[str, str]) -> dict[str, Any]:
    import_times = []
    imported: set[str] = set()
    for i in range(WARMUP_RUNS + runs):
        cumulative_us, modules = importtime_us(python, env)
        imported |= modules
        if i >= WARMUP_RUNS:
            import_times.append(cumulative_us)
    heavy_imported = sorted({name.split(".")[0] for name in imported} & set(HEAVY_MODULES))
    return {
        "cumulative_median_ms": round(statistics.median(import_times) / 1000, 2),
        "cumulative_max_ms": round(max(import_times) / 1000, 2),
        "modules_imported": len(imported),
        "heavy_checked": list(HEAVY_MODULES),
        "heavy_imported": heavy_imported,
    }


def measure(python: str, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llem-pycache-") as pycache_dir:
        cached = child_env(pycache_dir)
        imports = {
            "bytecode_cached": import_figures(python, runs, cached),
            "no_bytecode_cache": import_figures(python, runs, child_env(None)),
        }
        help_command = [*cli_command(python), "--help"]
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "llem-client --help": help_command,
            "import llem_client; llem_client.Client": [
                python,
                "-c",
                "import llem_client; llem_client.Client",
            ],
        }
        wall = {
            label: summary_ms(wall_times_s(command, runs, cached))
            for label, command in commands.items()
        }
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "warmup_runs": WARMUP_RUNS,
        "help_command": " ".join([Path(help_command[0]).name, *help_command[1:]]),
        "import_llem_client_cli": imports,
        "wall_time_bytecode_cached": wall,
    }


def markdown(report: dict[str, Any]) -> str:
    imports = report["import_llem_client_cli"]
    heavy = sorted(
        set(imports["bytecode_cached"]["heavy_imported"])
        | set(imports["no_bytecode_cache"]["heavy_imported"])
    )
    lines = [
        "# llem-client start-up",
        "",
        f"{report['date']}, Python {report['python']} ({report['implementation']}), "
        f"{report['platform']}, {report['cpu_count']} CPUs; {report['runs']} runs each after "
        f"{report['warmup_runs']} warm-up runs. Made by `benchmarks/cli_startup.py`.",
        "",
        "Wall time of a subprocess, bytecode cached (as after `pip install`):",
        "",
        "| command | median ms | p90 ms | min ms |",
        "|---|---:|---:|---:|",
    ]
    for label, figures in report["wall_time_bytecode_cached"].items():
        lines.append(
            f"| `{label}` | {figures['median_ms']} | {figures['p90_ms']} | {figures['min_ms']} |"
        )
    lines += [
        "",
        "Cumulative import time of `llem_client.cli` (`python -X importtime`):",
        "",
        "| bytecode | median ms | max ms | modules imported |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (("cached", "bytecode_cached"), ("not cached", "no_bytecode_cache")):
        figures = imports[key]
        lines.append(
            f"| {label} | {figures['cumulative_median_ms']} | {figures['cumulative_max_ms']} "
            f"| {figures['modules_imported']} |"
        )
    checked = ", ".join(HEAVY_MODULES)
    lines += [
        "",
        f"Heavy modules imported by `import llem_client.cli` (checked: {checked}): "
        f"**{', '.join(heavy) or 'none'}**.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="measured runs per command")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    args = parser.parse_args(argv)

    report = measure(args.python, args.runs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cli_startup.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    text = markdown(report)
    (args.out_dir / "cli_startup.md").write_text(text, "utf-8")
    print(text)
    heavy = sorted(
        {
            name
            for figures in report["import_llem_client_cli"].values()
            for name in figures["heavy_imported"]
        }
    )
    if heavy:
        print(f"FAIL: import llem_client.cli imported {', '.join(heavy)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
