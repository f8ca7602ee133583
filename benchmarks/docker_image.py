"""The image's cost: its size, how long it takes to build, and how long a container takes from
``docker run`` to serving.

- build time of the CPU image on the local Debian base, offline from the wheelhouse: cold (no
  layer cache), after a one-line source change (torch's layer cached), and fully cached;
- the image's size, and the size of its largest layers;
- cold start: ``docker run -d`` to the first 200 from ``/healthz`` seen from the host, and to the
  HEALTHCHECK's ``healthy`` (which cannot come before its first interval, 10 s), median of runs.

Usage (an engine, the base image and the wheelhouse as `.ci/docker-setup` leaves them)::

    python benchmarks/docker_image.py [--runs 5] [--out-dir benchmarks/results]

Writes ``docker_image.json`` and ``docker_image.md``.
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
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.container import harness

TORCH_SPEC = f"torch=={os.environ.get('LLEM_TORCH_VERSION', '2.13.0')}"


def copy_of_repo(dest: Path) -> Path:
    """The build context: the repository's tracked files plus the wheelhouse (hard links)."""
    files = harness.run(["git", "ls-files"]).stdout.splitlines()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(harness.REPO / name, target)
    for wheel in (harness.REPO / "docker" / "wheelhouse").iterdir():
        target = dest / "docker" / "wheelhouse" / wheel.name
        if not target.exists():
            os.link(wheel, target)
    return dest


def build(docker: str, context: Path, tag: str, base: str, *, no_cache: bool = False) -> float:
    argv = [docker, "build", "-q", "-f", "docker/Dockerfile", "-t", tag]
    argv += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_OFFLINE=1"]
    argv += ["--build-arg", f"TORCH_SPEC={TORCH_SPEC}", "--build-arg", "BUILD_ID=benchmark"]
    if no_cache:
        argv.append("--no-cache")
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "."],
        cwd=context,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def cold_start(docker: str, tag: str) -> tuple[float, float]:
    """Seconds from ``docker run`` to the first 200 on /healthz, and to ``healthy``."""
    port = harness.free_port()
    started = time.monotonic()
    container = harness.run(
        [docker, "run", "-d", "-e", "LLEM_API_TOKEN=bench", "-p", f"127.0.0.1:{port}:8000", tag]
    ).stdout.strip()
    try:
        first_ok = harness.wait_http_ok(f"http://127.0.0.1:{port}/healthz")
        harness.wait_healthy(docker, container)
        healthy = time.monotonic() - started
        return first_ok, healthy
    finally:
        harness.run([docker, "rm", "-f", "-v", container], check=False)


def layers(docker: str, tag: str) -> list[dict[str, Any]]:
    done = harness.run([docker, "history", "--no-trunc", "--format", "{{json .}}", tag])
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return [
        {"size": r["Size"], "created_by": r["CreatedBy"][:120] or "(the base image's root fs)"}
        for r in rows
    ]


def machine(docker: str) -> dict[str, Any]:
    info = harness.engine_info(docker)
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(int(str(info.get("MemTotal", 0))) / 2**30, 1),
        "platform": platform.platform(),
        "docker_server": info.get("ServerVersion"),
        "storage_driver": info.get("Driver"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time")
    parser.add_argument(
        "--base", default=os.environ.get("LLEM_TEST_BASE_IMAGE", "llem-base:bookworm")
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    docker = harness.docker_cli()
    tag = f"llem:bench-{uuid.uuid4().hex[:8]}"

    with tempfile.TemporaryDirectory(prefix="llem-bench-") as tmp:
        context = copy_of_repo(Path(tmp))
        cold = build(docker, context, tag, args.base, no_cache=True)
        init = context / "service" / "llem_service" / "__init__.py"
        init.write_text(init.read_text() + f"# benchmark {uuid.uuid4().hex}\n")
        source_change = build(docker, context, tag, args.base)
        cached = build(docker, context, tag, args.base)
    size = int(harness.run([docker, "image", "inspect", "--format", "{{.Size}}", tag]).stdout)
    starts = [cold_start(docker, tag) for _ in range(args.runs)]
    history = layers(docker, tag)
    harness.run([docker, "rmi", tag], check=False)

    first_ok = [s[0] for s in starts]
    healthy = [s[1] for s in starts]
    record = {
        "machine": machine(docker),
        "base_image": args.base,
        "torch": TORCH_SPEC + " (CPU build, from the wheelhouse)",
        "image_size_bytes": size,
        "build_s": {"cold": cold, "after_source_change": source_change, "cached": cached},
        "cold_start_to_first_200_s": {"median": statistics.median(first_ok), "runs": first_ok},
        "cold_start_to_healthy_s": {"median": statistics.median(healthy), "runs": healthy},
        "layers": history,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "docker_image.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    md = [
        "# The service image: size, build time, cold start",
        "",
        f"{m['date']}, {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"{m['platform']}, Docker {m['docker_server']} ({m['storage_driver']}); a machine shared "
        "with other work. Made by `benchmarks/docker_image.py`.",
        "",
        f"CPU image on `{args.base}` (Debian bookworm, bootstrapped locally), {record['torch']}, "
        "built offline (`PIP_OFFLINE=1`).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| image size | {size / 1e9:.2f} GB |",
        f"| build, cold (`--no-cache`) | {cold:.1f} s |",
        f"| build after a one-line source change | {source_change:.1f} s |",
        f"| build, fully cached | {cached:.1f} s |",
        f"| `docker run` to first `/healthz` 200, median of {args.runs} | "
        f"{statistics.median(first_ok):.2f} s |",
        f"| `docker run` to HEALTHCHECK `healthy`, median of {args.runs} | "
        f"{statistics.median(healthy):.2f} s |",
        "",
        "`healthy` waits for the HEALTHCHECK's first probe, which Docker runs one interval "
        "(10 s) after the start; the first 200 is when the service can take requests. The "
        "default GPU image (CUDA base, torch for CUDA from PyPI) is not measured here: this "
        "machine reaches no registry for the CUDA base.",
        "",
        "Largest layers:",
        "",
        "| size | created by |",
        "|---:|---|",
    ]
    biggest = sorted(history, key=lambda r: _bytes(r["size"]), reverse=True)[:5]
    md += [f"| {r['size']} | `{r['created_by'][:90]}` |" for r in biggest]
    (args.out_dir / "docker_image.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _bytes(size: str) -> float:
    units = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if size.endswith(unit):
            return float(size[: -len(unit)]) * units[unit]
    return 0.0


if __name__ == "__main__":
    main()
