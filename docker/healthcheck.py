"""The image's HEALTHCHECK: exit 0 when ``GET /healthz`` on this container answers 200.

Plain standard library, so the check costs one short Python start and needs no curl in the
image. ``/healthz`` touches no GPU and no store, so a busy experiment never fails it.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('LLEM_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"llem healthcheck: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
