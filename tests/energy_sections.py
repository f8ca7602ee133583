"""Build the result's energy section from a scripted session's record, as `run_experiment`
does, for tests that look at one part of it (acquisition, host energy)."""

from __future__ import annotations

from collections.abc import Sequence

from llem_client import EnergyConfig, EnergyResult
from llem_service.energy.base import MeterRecord
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.figures import Batch, Span, Work
from llem_service.energy.report import build_energy


def energy_section(
    record: MeterRecord,
    uuids: Sequence[str],
    span: Span,
    output_tokens: int = 64,
) -> tuple[EnergyResult, dict[str, str]]:
    """The section and its warnings (code: message) for one batch of one request."""
    work = Work((Batch(span, (8,), (output_tokens,)),))
    section = build_energy(
        record,
        list(uuids),
        work,
        baselines=BaselineSet(),
        prefill=None,
        plan=EnergyConfig(phase_split="none", cross_check_threshold=0.5),
        now=0.0,
    )
    assert section.result is not None
    return section.result, dict(section.warnings)
