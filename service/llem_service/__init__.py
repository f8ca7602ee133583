"""llem service: the FastAPI server, job store, scheduler, executors, backends and energy meters."""

from llem_client._version import SCHEMA_VERSION, __version__

__all__ = ["SCHEMA_VERSION", "__version__"]
