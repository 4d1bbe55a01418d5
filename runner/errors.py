"""The one exception type for the user's mistakes.

Raised where the mistake is found, with a message naming the key (or file) and what is valid;
`python -m runner` prints it as one line on stderr and exits with code 2.
"""

import argparse


class UserError(Exception):
    """Bad input from the user: a config value, a file, a dataset that cannot be had."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (libraries' errors often run to many lines)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the `python -m runner.X` commands: a usage mistake is the user's one line, not usage text."""

    def error(self, message: str):
        raise UserError(message)
