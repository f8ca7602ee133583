"""Service settings, from ``LLEM_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server reads from its environment. Built once, passed to `create_app`."""

    model_config = SettingsConfigDict(env_prefix="LLEM_", env_file=".env", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Field(
        default=Path("llem-data"), description="Job store and results live here."
    )
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required on /v1 routes when set."
    )
    log_level: str = "info"
    max_body_bytes: int = Field(
        default=4 * 2**20, gt=0, description="Requests with a larger body are refused (413)."
    )
    cancel_grace_s: float = Field(
        default=5.0, ge=0, description="After SIGTERM, wait this long before SIGKILL."
    )
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    model_roots: str = Field(
        default="",
        description="Directories (separated by ':') that local models and JSONL prompt files "
        "must live in. Empty: local paths are refused.",
    )
    allow_remote_code: bool = Field(
        default=False, description="Allow configs that set pytorch.trust_remote_code."
    )

    @property
    def model_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in self.model_roots.split(os.pathsep) if p.strip())

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"
