"""``python -m distilwave.cli``: the same as the ``distilwave`` console script."""

from distilwave.cli import main

main()
