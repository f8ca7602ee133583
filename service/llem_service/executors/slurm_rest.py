"""Slurm's state through slurmrestd (``LLEM_SLURM_RESTD_URL``), the rest through its commands.

Where a cluster runs slurmrestd, the status of every job (`SlurmApi.states`, `details`) and the
controller's health (`ping`) come from its REST API rather than from ``squeue`` and
``scontrol`` processes: one HTTP request a poll, no process per query, and the same answers.
Submitting, cancelling and reading the partition stay with ``sbatch``, ``scancel`` and
``sinfo`` (`SlurmCli`): the batch script and its options are the same either way.

Authentication: ``rest_auth/jwt`` with ``LLEM_SLURM_RESTD_TOKEN`` (``scontrol token``) sent as
``X-SLURM-USER-TOKEN`` (and ``LLEM_SLURM_RESTD_USER`` as ``X-SLURM-USER-NAME``), or
``rest_auth/local`` over a UNIX socket (``unix:/path``), where slurmrestd knows the caller by
the socket. Answers of API ``v0.0.38`` (Slurm 22.05) are read, and the nested numbers and state
lists of later versions (``v0.0.39`` on) too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from llem_service.executors.slurm_cli import SlurmCli, SlurmError, SlurmJobState, SlurmUnreachable


class SlurmRestd(SlurmCli):
    """`SlurmApi` with status from slurmrestd and actions from Slurm's commands.

    Args:
        url: ``http(s)://host:port`` or ``unix:/path/to/socket``.
        api: The OpenAPI plugin version in the paths (``v0.0.38``).
        token, user: JWT and user name for ``rest_auth/jwt``; None with ``rest_auth/local``.
        bin_dir, timeout_s, env: As for `SlurmCli`.
    """

    def __init__(
        self,
        url: str,
        *,
        api: str = "v0.0.38",
        token: str | None = None,
        user: str | None = None,
        bin_dir: Path | None = None,
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(bin_dir, timeout_s=timeout_s, env=env)
        self.url = url
        self.api = api
        headers = {}
        if token is not None:
            headers["X-SLURM-USER-TOKEN"] = token
        if user is not None:
            headers["X-SLURM-USER-NAME"] = user
        if url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=url.removeprefix("unix:"))
            self.http = httpx.Client(
                transport=transport,
                base_url="http://slurmrestd",
                headers=headers,
                timeout=timeout_s,
            )
        else:
            self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def _get(self, path: str) -> dict[str, Any]:
        try:
            response = self.http.get(f"/slurm/{self.api}/{path}")
        except httpx.HTTPError as exc:
            raise SlurmUnreachable(f"slurmrestd at {self.url}: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if response.status_code in (401, 403):
            raise SlurmUnreachable(
                f"slurmrestd at {self.url} refused llem ({response.status_code}): check "
                "LLEM_SLURM_RESTD_TOKEN and LLEM_SLURM_RESTD_USER"
            )
        errors = data.get("errors") or []
        said = "; ".join(str(e.get("error") or e.get("description")) for e in errors)
        if response.status_code >= 400 and "Invalid job id" not in said:
            message = said or f"HTTP {response.status_code}"
            if response.status_code >= 500:
                raise SlurmUnreachable(f"slurmrestd at {self.url}: {message}")
            raise SlurmError(f"slurmrestd at {self.url}: {message}")
        return data

    def ping(self) -> str | None:
        try:
            pings = self._get("ping").get("pings") or []
        except SlurmError as exc:
            return str(exc)
        if any(str(p.get("ping", "")).upper() == "UP" for p in pings):
            return None
        said = ", ".join(f"{p.get('hostname')}: {p.get('ping')}" for p in pings) or "no answer"
        return f"slurmctld does not answer (slurmrestd ping: {said})"

    def states(self, job_ids: Sequence[str]) -> dict[str, SlurmJobState]:
        if not job_ids:
            return {}
        wanted = set(job_ids)
        found = {}
        for job in self._get("jobs").get("jobs") or []:
            state = _job_state(job)
            if state.job_id in wanted:
                found[state.job_id] = state
        return {job_id: found[job_id] for job_id in job_ids if job_id in found}

    def details(self, job_id: str) -> SlurmJobState | None:
        jobs = self._get(f"job/{job_id}").get("jobs") or []
        for job in jobs:
            state = _job_state(job)
            if state.job_id == job_id:
                return state
        return None


def _number(value: Any) -> int | None:
    """A number of v0.0.38 (plain) or of later versions (``{"set": true, "number": n}``)."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return int(value) if isinstance(value, int | float) else None


def _exit_code(value: Any) -> str:
    """``<code>:<signal>`` as scontrol prints it."""
    if isinstance(value, dict):  # v0.0.39 on: {"return_code": {...}, "signal": {"id": {...}}}
        code = _number(value.get("return_code")) or 0
        signal = value.get("signal") or {}
        number = _number(signal.get("id")) if isinstance(signal, dict) else None
        return f"{code}:{number or 0}"
    status = _number(value)
    if status is None:
        return ""
    # A wait status, as the controller keeps it: the exit code above, the signal below.
    return f"{(status >> 8) & 0xFF}:{status & 0x7F}"


def _time_limit(value: Any) -> str:
    minutes = _number(value)
    if minutes is None:
        return "UNLIMITED" if value is not None else ""
    return f"{minutes // 60}:{minutes % 60:02d}:00" if minutes >= 60 else f"{minutes}:00"


def _job_state(job: Mapping[str, Any]) -> SlurmJobState:
    state = job.get("job_state", "UNKNOWN")
    if isinstance(state, list):  # v0.0.39 on: ["RUNNING", "REQUEUED", ...]
        state = state[0] if state else "UNKNOWN"
    return SlurmJobState(
        job_id=str(job.get("job_id")),
        state=str(state),
        reason=str(job.get("state_reason") or ""),
        node=str(job.get("nodes") or ""),
        time_limit=_time_limit(job.get("time_limit")),
        exit_code=_exit_code(job.get("exit_code")),
        source="slurmrestd",
    )
