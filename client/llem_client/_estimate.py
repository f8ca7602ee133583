"""`Estimate`: a published energy figure, value and expanded uncertainty (k = 2). Its own
module so that every part of the contract (the GPUs' energy, the host's) can use it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Estimate(BaseModel):
    """A measured value and its expanded uncertainty (k = 2, about 95%), in the unit its field
    name gives. ``total`` = sqrt(``random``^2 + ``systematic``^2)."""

    model_config = ConfigDict(extra="forbid")

    value: float
    random: float = Field(ge=0, description="Run-to-run part (quantisation, sampling, spread).")
    systematic: float = Field(
        ge=0, description="Part that does not average away (sensor accuracy, baseline drift)."
    )
    total: float = Field(ge=0)
