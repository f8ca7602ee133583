"""The GPU validation campaign: does llem's measurement hold on this GPU? Run it first whenever
a GPU is available. It fits in 8 minutes of an H200 (about 6 of checks) and writes
``benchmarks/results/gpu_validation.json`` and ``.md``, naming the GPU, the driver and the
date, with each check's pass criterion and whether it passed:

 1. whether the energy counter and the instant and averaged power fields answer at all (the
    machine may be sandboxed), their refresh periods and steps, idle and under a steady
    matrix-multiply load, and the instant field's step response;
 2. counter against integrated instant power over 5, 10 and 30 s steady windows and 10 s idle
    (within 2%);
 3. part-time sensing: a square-wave load with a 100 ms period at 25% duty at four phase
    offsets, and a 143 ms period, against the energy expected from the on and off power
    (within 3% and independent of phase, or covered by llem's stated uncertainty; otherwise
    the systematic term must grow by what it reports);
 4. a window-length sweep from 0.1 to 5 s: the stated uncertainty contains the deviation from
    the long-window rate in at least 95% of windows;
 5. the synchronise at the marks: queued kernels measured with and without it;
 6. baseline settling: idle power over 60 s right after 60 s of load;
 7. the sampler's overhead on tokens/s, off against on (its own process, 10 ms);
 8. an end-to-end experiment through llem's own experiment path, with Zeus's ``ZeusMonitor``
    measuring the same window (within 1%);
 9. counter-measured prefill against the timeline share;
10. per-step timestamps against CUDA events;
11. a second CUDA process started during a run, which must be reported.

Each check runs through llem's own code (its NVML adapter, metering sessions, sampler process
and experiment path), so what passes here is what an experiment relies on.

``--dry-run`` runs the whole campaign against the scripted GPU on the CPU (part of the default
test tier, so the script cannot rot between GPU sessions); its report says DRY RUN and goes
to ``gpu_validation_dry_run.*`` unless ``--out`` says otherwise. ``--time-scale`` shortens
its real-time checks.

On a GPU host, from the repository root::

    pip install -e '.[service,pytorch,nvml]' zeus
    python benchmarks/gpu_validation.py            # ~7 min; CUDA device 0 (--device N)

Packages needed beyond torch, transformers, nvidia-ml-py and pyarrow (to carry as wheels to
a machine without an index: ``pip download -d wheels <these>`` resolves their dependencies):

- llem's service and client: fastapi, starlette, uvicorn, pydantic, pydantic-settings,
  httpx, pyyaml, rich;
- Zeus for check 8: zeus (0.16; it brings numpy, pandas, scikit-learn, tyro, amdsmi,
  python-dateutil);
- the tiny models and tokenizers the campaign builds: tokenizers, safetensors (transformers'
  own dependencies).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import __version__

from benchmarks.validation.outcome import CheckResult, write_report
from benchmarks.validation.rigs import CudaRig, Rig, ScriptedRig
from benchmarks.validation.sensor_checks import (
    check_counter_vs_integral,
    check_fields,
    check_part_time,
    check_second_process,
    check_settling,
    check_synchronize,
    check_window_sweep,
)
from benchmarks.validation.workload_checks import (
    check_end_to_end,
    check_prefill,
    check_sampler_overhead,
    check_step_timestamps,
)

RESULTS = Path(__file__).parent / "results"
Check = Callable[[Rig, dict[str, Any]], CheckResult]

#: In the order they run: checks that feed others come first (2 feeds 3 and 4; 8 feeds 9).
CHECKS: tuple[tuple[int, str, Check], ...] = (
    (1, "sensors answer", check_fields),
    (2, "counter vs integral", check_counter_vs_integral),
    (3, "part-time sensing", check_part_time),
    (4, "window sweep", check_window_sweep),
    (5, "synchronise", check_synchronize),
    (6, "baseline settling", check_settling),
    (11, "second process", check_second_process),
    (7, "sampler overhead", check_sampler_overhead),
    (8, "end to end", check_end_to_end),
    (9, "prefill", check_prefill),
    (10, "step timestamps", check_step_timestamps),
)


def run_campaign(rig: Rig, only: set[int] | None, budget_s: float) -> list[CheckResult]:
    """Every check in turn; a check that raises is reported as not run, with the reason, and
    the campaign goes on. Past ``budget_s`` the remaining checks are skipped."""
    state: dict[str, Any] = {}
    results = []
    started = time.perf_counter()
    for number, name, check in CHECKS:
        if only is not None and number not in only:
            continue
        if time.perf_counter() - started > budget_s:
            results.append(CheckResult(number, name, "", error="skipped: the time budget ran out"))
            continue
        print(f"check {number}: {name}...", flush=True)
        began = time.perf_counter()
        try:
            result = check(rig, state)
        except Exception as exc:
            trace = traceback.format_exc(limit=6)
            result = CheckResult(number, name, "", error=f"{type(exc).__name__}: {exc}")
            result.measured = {"traceback": trace}
        result.seconds = time.perf_counter() - began
        verdict = {True: "pass", False: "FAIL", None: "not run"}[result.passed]
        print(f"  {verdict}: {result.summary or result.error}", flush=True)
        results.append(result)
    return sorted(results, key=lambda r: r.number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the scripted GPU, on the CPU")
    parser.add_argument("--time-scale", type=float, default=0.02, help="dry run: shorter")
    parser.add_argument("--part-time", action="store_true", help="dry run: a part-time sensor")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--only", type=int, nargs="*", help="run only these checks")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip checks past this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="llem-validation-"))
    started = time.perf_counter()
    rig: Rig = (
        ScriptedRig(workdir, time_scale=args.time_scale, part_time=args.part_time)
        if args.dry_run
        else CudaRig(workdir, args.device)
    )
    try:
        checks = run_campaign(rig, set(args.only) if args.only else None, args.budget_s)
        header = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dry_run": args.dry_run,
            "gpu": rig.describe(),
            "llem": __version__,
            "python": platform.python_version(),
            "seconds": time.perf_counter() - started,
        }
    finally:
        rig.close()
        shutil.rmtree(workdir, ignore_errors=True)
    stem = "gpu_validation_dry_run" if args.dry_run else "gpu_validation"
    json_path, md_path = write_report(args.out, stem, header, checks)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
