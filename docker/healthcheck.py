"""The serve image's HEALTHCHECK: exit 0 only when ``/readyz`` answers 200.

``/readyz`` is 200 after the bundle is loaded and a warm-up generation ran, 503 before that
and while draining after SIGTERM. Standard library only, so the image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("DISTILWAVE_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
