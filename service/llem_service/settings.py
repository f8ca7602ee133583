"""Service settings, from ``LLEM_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from llem_service.energy.sensors import SensorTable


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
    allow_unauthenticated: bool = Field(
        default=False,
        description="Without api_token the server binds only loopback addresses; true lets it "
        "run open on any address (anyone who can reach it can run any model on its GPUs).",
    )
    log_level: str = "info"
    max_body_bytes: int = Field(
        default=4 * 2**20, gt=0, description="Requests with a larger body are refused (413)."
    )
    cancel_grace_s: float = Field(
        default=5.0, ge=0, description="After SIGTERM, wait this long before SIGKILL."
    )
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    experiment_timeout_s: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="An experiment running longer than this (load and warm-up included) is "
        "stopped and its job fails; 0 for no limit.",
    )
    max_dataset_bytes: int = Field(
        default=256 * 2**20, gt=0, description="JSONL prompt files larger than this are refused."
    )
    model_roots: str = Field(
        default="",
        description="Directories (separated by ':') that local models and JSONL prompt files "
        "must live in. Empty: local paths are refused.",
    )
    max_study_points: int = Field(
        default=10_000,
        gt=0,
        description="A study with more points than this (variants x sweep grid) is refused.",
    )
    max_study_runs: int = Field(
        default=20_000,
        gt=0,
        description="A study with more runs than this (valid points x cycles) is refused: "
        "its runs are inserted in one transaction at submit.",
    )
    allow_remote_code: bool = Field(
        default=False, description="Allow configs that set pytorch.trust_remote_code."
    )
    # Size bounds, checked at submit: a config over them is refused with a 422 that names the
    # setting, rather than queued to fail (or to hold the GPUs for a day) when it runs.
    max_n_prompts: int = Field(default=100_000, gt=0, description="Most requests per repeat.")
    max_output_tokens: int = Field(
        default=32_768, gt=0, description="Largest max_output_tokens per request."
    )
    max_batch_size: int = Field(default=4_096, gt=0, description="Largest batch_size.")
    max_input_tokens: int = Field(
        default=131_072,
        gt=0,
        description="Longest prompt, tokens (synthetic input_len and max_input_tokens).",
    )
    hub_probe_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="At submit, how long to wait for the model hub to say whether a model "
        "exists before treating the hub as unreachable.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without the token (for a Prometheus on a trusted network); "
        "by default /metrics needs it like every /v1 route.",
    )
    metrics_poll_s: float = Field(
        default=5.0,
        ge=0,
        description="While no experiment holds a GPU, read its power, energy counter, "
        "temperature and use this often for /metrics; 0: no idle poll.",
    )
    powercap_root: str = Field(
        default="/sys/class/powercap",
        description="Where the host's RAPL counters are read (CPU package and DRAM energy); "
        "in a container, where the host's powercap tree is mounted. Empty: host energy off.",
    )
    sensor_accuracy: str = Field(
        default="",
        description="JSON object overriding the power-sensor accuracy table, keyed by a "
        'substring of GPU names: {"H100": {"gain_rel": 0.02, "offset_w": 2, '
        '"sensed_fraction": 0.25, "source": "calibrated against a meter, 2026-11"}}. Empty: '
        "the documented table (llem_service/energy/sensors.py).",
    )

    @field_validator("sensor_accuracy")
    @classmethod
    def _sensor_table_parses(cls, text: str) -> str:
        from llem_service.energy.sensors import SensorTable

        SensorTable.from_json(text)  # refuse a bad table at start, not in the first experiment
        return text

    @property
    def sensor_table(self) -> SensorTable:
        from llem_service.energy.sensors import SensorTable

        return SensorTable.from_json(self.sensor_accuracy)

    # -- scale-out: where experiments run, and how GPUs are shared ---------------------------
    executor: Literal["local", "slurm"] = Field(
        default="local",
        description="local: experiments run in processes on this host. slurm: each is a Slurm "
        "batch job (see the slurm_* settings); this service is the front door on a login node.",
    )
    gpu_lock_dir: Path = Field(
        default=Path("/run/lock/llem"),
        description="One lock file per GPU (flock). Every llem service of the host that must "
        "not share GPUs with this one uses the same local directory (compose mounts the "
        "llem-gpu-locks volume there).",
    )
    backfill_limit: int | None = Field(
        default=None,
        ge=0,
        description="How many later jobs may start ahead of one waiting for GPUs; 0 keeps "
        "strict submission order. Default: the number of GPUs.",
    )
    # Slurm (executor=slurm); see llem_service.executors.slurm and the README.
    slurm_shared_dir: Path | None = Field(
        default=None,
        description="Job directories, on a filesystem every compute node sees at the same path "
        "(the experiment goes there, the outcome comes back). Default: <data_dir>/slurm.",
    )
    slurm_partition: str | None = Field(default=None, description="sbatch --partition.")
    slurm_account: str | None = Field(default=None, description="sbatch --account.")
    slurm_time_limit: str | None = Field(
        default=None,
        description="sbatch --time, in Slurm's format (e.g. 2:00:00). Default: the experiment "
        "timeout plus 15 minutes; none when the experiment timeout is 0.",
    )
    slurm_exclusive: bool = Field(
        default=True, description="sbatch --exclusive: each experiment alone on its node."
    )
    slurm_gres: str = Field(
        default="gpu",
        description="GPU gres name: --gres=<gres>:<gpus>. Empty for nodes without GPUs.",
    )
    slurm_requeue: bool = Field(
        default=True, description="sbatch --requeue: node failures and preemptions requeue."
    )
    slurm_extra_args: str = Field(
        default="", description="More sbatch options, split as a shell would (e.g. --qos=x)."
    )
    slurm_python: str = Field(
        default="",
        description="Python with llem installed on the compute nodes. Default: this server's.",
    )
    slurm_container_runtime: Literal["none", "apptainer", "pyxis"] = Field(
        default="none",
        description="Run the experiment in the image on the node: apptainer (a .sif) or pyxis "
        "(Enroot, through srun --container-image). none: the installed package.",
    )
    slurm_container_image: str | None = Field(default=None, description="The image to run.")
    slurm_container_args: str = Field(
        default="", description="More options of apptainer exec or srun (pyxis)."
    )
    slurm_poll_s: float = Field(default=5.0, gt=0, description="Slurm status poll interval.")
    slurm_vanish_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="A job Slurm no longer knows, with no outcome, fails after this long.",
    )
    slurm_max_submitted: int = Field(
        default=256, ge=1, description="Jobs handed to Slurm at once; the rest wait in llem."
    )
    slurm_bin_dir: Path | None = Field(
        default=None, description="Where sbatch, squeue, ... are. Default: the PATH."
    )
    slurm_command_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for any one Slurm command."
    )
    slurm_restd_url: str | None = Field(
        default=None,
        description="slurmrestd (http(s)://host:port, or unix:/path for rest_auth/local): job "
        "status and pings from its REST API instead of squeue/scontrol. Submitting and "
        "cancelling stay with sbatch and scancel.",
    )
    slurm_restd_api: str = Field(
        default="v0.0.38", pattern=r"^v\d+\.\d+\.\d+$", description="slurmrestd API version."
    )
    slurm_restd_user: str | None = Field(default=None, description="X-SLURM-USER-NAME.")
    slurm_restd_token: SecretStr | None = Field(
        default=None, description="X-SLURM-USER-TOKEN (a JWT from `scontrol token`)."
    )

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, token: SecretStr | None) -> SecretStr | None:
        # An empty token would accept "Authorization: Bearer": open while looking locked.
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("LLEM_API_TOKEN is set but empty; set a real token or unset it")
        return token

    def exposure_problem(self) -> str | None:
        """Why the server must not start on `host` as configured, or None if it may.

        Without a token the server runs open, so it may bind only loopback addresses, unless
        ``allow_unauthenticated`` says running open is intended.
        """
        if self.api_token is not None or self.allow_unauthenticated or _is_loopback(self.host):
            return None
        return (
            f"refusing to listen on {self.host} without a token: anyone who can reach it could "
            "run any model on this host. Set LLEM_API_TOKEN, bind 127.0.0.1, or set "
            "LLEM_ALLOW_UNAUTHENTICATED=true to run open on purpose"
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
