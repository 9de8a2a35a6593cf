"""The one exception type that means "the user gave us something we cannot use".

Every layer (compute, store, dashboard) raises :class:`UserError` for bad input. The CLI turns
it into one clear line on stderr and a non-zero exit, without a traceback unless ``--debug``.
Anything else that escapes is a bug and is reported as an internal error.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do about it.

    Keep the message to one line. ``exit_code`` is the process exit status the CLI uses.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def choices_error(kind: str, value: str, valid: list[str] | tuple[str, ...]) -> UserError:
    """An error for an unknown choice that lists the valid ones, e.g. an unknown model name."""
    return UserError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(sorted(valid))}")
