"""Where runs are stored: the default SQLite store, and quick checks that a store can be used at all.

MLflow finds out late and slowly that a store is unusable: an HTTP server that is down costs its
client minutes of retries, and a SQLite file it cannot open costs ~100 s of engine-creation
retries (nine three-line warnings, ``mlflow.store.db.utils.MAX_RETRY_COUNT``; no setting bounds
them). These checks answer in milliseconds, before MLflow touches the store.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

PROBE_TIMEOUT_S = 3.0
SQLITE_PREFIX = "sqlite:///"


def default_tracking_uri(cwd: Path | None = None) -> str:
    """Return ``$MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in ``cwd``.

    The path is absolute so that the store stays the same whatever folder a later command
    (``radmtl infer``, ``mlflow ui``) runs from.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(cwd) if cwd is not None else Path.cwd()
    return f"{SQLITE_PREFIX}{(folder / 'mlflow.db').resolve()}"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_http(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Return None if an MLflow server answers at ``uri``, else the reason it does not.

    Any HTTP answer (even 401/404 behind a proxy) proves a server is there; only a failed
    connection or a timeout counts as unreachable.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (query string dropped); None for other stores and
    for an in-memory database."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    db = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(db) if db and db != ":memory:" else None


def sqlite_write_problem(db: Path) -> str | None:
    """Why SQLite could not create or write the database ``db``, or None when it can.

    Tried for real rather than read from permission bits, which do not stop root: the file must be
    a regular file that opens for writing, and its folder (or, when MLflow will create the folder,
    the nearest existing one above) must take a new file, since SQLite writes its journal beside
    the database.
    """
    db = Path(db).absolute()
    if db.exists() and not db.is_file():
        return f"{db} is a folder or special file, not a database file"
    if db.is_file():
        try:
            with open(db, "r+b"):
                pass
        except OSError as err:
            return f"{db} cannot be opened for writing ({err.strerror or err})"
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder, so {db} cannot be created"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".radmtl-probe-"):
            pass
    except OSError as err:
        return f"folder {folder} does not take new files ({err.strerror or err})"
    return None
