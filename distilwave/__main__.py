"""``python -m distilwave``: the same as the ``distilwave`` console script."""

from distilwave.cli import main

main()
