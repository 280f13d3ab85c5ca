"""The one exception family the CLI turns into a single clear line instead of a traceback."""

from __future__ import annotations


class RadmtlError(Exception):
    """Bad input or state a user can fix; the message says which file/key, what is wrong, and how to fix it."""
