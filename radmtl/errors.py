"""The exceptions the CLI turns into one clear line instead of a traceback, and SIGTERM's.

SIGTERM as an exception raised where the program is — except inside a tracking-store call. A
scheduler, ``timeout`` or ``docker stop`` sends SIGTERM; radmtl turns it into :class:`Terminated`
so that every clean-up written for Ctrl-C runs for it too. Raised in the middle of an MLflow call,
though, it can leave that call's SQLite connection holding the database's write lock; the same
process's next call — marking the run KILLED — then waits out SQLite's 20 s busy timeout and
fails, and the run stays RUNNING for ever (seen in the DDP kill test). Tracking calls therefore run
:func:`shielded`: a SIGTERM that arrives inside one is raised as soon as the call returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class RadmtlError(Exception):
    """Bad input or state a user can fix; the message says which file/key, what is wrong, and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C.

    A KeyboardInterrupt subclass so that every clean-up written for Ctrl-C runs for it too: the
    MLflow run is marked KILLED, hidden partial outputs are removed, the last checkpoint stays.
    """


_shield_depth = 0
_pending = False


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler: raise :class:`Terminated` now, or when the current shielded call ends."""
    global _pending
    if _shield_depth:
        _pending = True
        return
    raise Terminated()


@contextmanager
def shielded() -> Iterator[None]:
    """Hold a SIGTERM back until the block ends (on return or on an exception alike)."""
    global _shield_depth, _pending
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if _shield_depth == 0 and _pending:
            _pending = False
            raise Terminated()
