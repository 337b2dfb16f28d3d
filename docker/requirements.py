"""Print the project's runtime requirements from pyproject.toml, one a line (image builds).

    python3 docker/requirements.py torch   # torch and torchaudio (installed from the torch index)
    python3 docker/requirements.py rest    # everything else

Reading them here keeps pyproject.toml the only place they are written down.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH = {"torch", "torchaudio"}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("torch", "rest"):
        sys.stderr.write("usage: requirements.py torch|rest\n")
        return 2
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    want_torch = argv[1] == "torch"
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        if (name in TORCH) == want_torch:
            sys.stdout.write(requirement + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
