"""Where figures were measured: recorded beside every figure the tiers and benchmarks write."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any


def machine() -> dict[str, Any]:
    """Date, CPUs, platform, Python and the 1-minute load average (figures on a shared machine
    are read with it)."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
