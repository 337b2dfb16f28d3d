"""Errors a user can act on: the CLI prints them as one line and exits with their code."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a corpus, an option): one line, a non-zero exit.

    Exit codes: 2 for bad input or usage, 1 for a job that failed while running.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
