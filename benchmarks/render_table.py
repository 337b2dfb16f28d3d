"""Print the README "Performance" section rendered from a ``distilwave bench`` JSON.

python benchmarks/render_table.py [benchmarks/results/bench-....json]   (default: newest)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report import render_markdown


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        found = sorted(Path(__file__).parent.glob("results/*.json"))
        if not found:
            sys.exit("no results in benchmarks/results/: run `make bench` first")
        path = found[-1]
    print(render_markdown(json.loads(path.read_text(encoding="utf-8"))), end="")


if __name__ == "__main__":
    main()
