"""One check's outcome, and the campaign's report as JSON and a markdown table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CheckResult:
    """What one check measured and whether it met its criterion.

    Attributes:
        number: 1 to 11, the issue's numbering.
        name: Short name.
        criterion: The pass criterion, in words.
        passed: Whether it was met; None when the check could not run (``error`` says why).
        summary: The figures behind the verdict, one line for the table.
        measured: Everything measured (JSON-able).
        seconds: Wall time the check took.
        error: Why the check could not run.
    """

    number: int
    name: str
    criterion: str
    passed: bool | None = None
    summary: str = ""
    measured: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def _verdict(check: CheckResult) -> str:
    if check.passed is None:
        return f"not run: {check.error}" if check.error else "not run"
    return "**pass**" if check.passed else "**FAIL**"


def write_report(
    out: Path, stem: str, header: dict[str, Any], checks: list[CheckResult]
) -> tuple[Path, Path]:
    """``{stem}.json`` and ``{stem}.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    passed = sum(1 for c in checks if c.passed)
    failed = sum(1 for c in checks if c.passed is False)
    document = {
        **header,
        "passed": passed,
        "failed": failed,
        "not_run": len(checks) - passed - failed,
        "checks": [asdict(c) for c in checks],
    }
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    gpu = header["gpu"]
    kind = (
        "DRY RUN on the scripted GPU (CPU), not a measurement of hardware"
        if header["dry_run"]
        else "measured on the hardware named here"
    )
    lines = [
        f"# GPU validation campaign: {gpu.get('gpu')}, driver {gpu.get('driver')}, "
        f"{header['date'][:10]}",
        "",
        f"{kind}. {passed} passed, {failed} failed, {len(checks) - passed - failed} not run; "
        f"{header['seconds']:.0f} s. Made by `benchmarks/gpu_validation.py"
        f"{' --dry-run' if header['dry_run'] else ''}`.",
        "",
        f"GPU {gpu.get('uuid')}; NVML {gpu.get('nvml')}; CUDA (driver) "
        f"{gpu.get('cuda_driver')}; power limit {gpu.get('power_limit_w')} W; host "
        f"{gpu.get('host')}; llem {header['llem']}.",
        "",
        "| # | check | pass criterion | measured | result |",
        "|---:|---|---|---|---|",
    ]
    for c in checks:
        summary = (c.summary or c.error or "").replace("|", "/")
        lines.append(f"| {c.number} | {c.name} | {c.criterion} | {summary} | {_verdict(c)} |")
    lines += ["", "Every figure behind these lines is in the JSON beside this file.", ""]
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(lines))
    return json_path, md_path
