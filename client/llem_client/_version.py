"""Versions of the package and of the wire contract."""

from typing import Final

__version__ = "0.1.0"

#: Version of the JSON contract (config, result, job). Bumped on any incompatible change.
SCHEMA_VERSION: Final = "1"
