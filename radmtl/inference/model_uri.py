"""Where a model comes from: ``--model`` as a checkpoint file, a local MLflow model folder or an
MLflow URI, resolved to a local radmtl checkpoint (and its hash, for provenance).

``radmtl infer --model runs:/<id>/model`` (or ``models:/NAME@best``, ``models:/NAME/3``,
``models:/<model_id>``) rebuilds the network from the checkpoint that travels with the logged model —
``artifacts/`` of the pyfunc model (:mod:`radmtl.inference.pyfunc_model`), ``extra_files/`` of a model
logged by an older radmtl — never by unpickling anything.

Nothing is copied when the store keeps its artifacts on this machine (a SQLite store with ``file://``
artifacts, radmtl's default): the checkpoint is read where the store keeps it, which is also the path
provenance records. A remote store's model is downloaded into a temporary folder that is deleted when
the process ends (or at :func:`release_downloads`); provenance then records the MLflow URI
(:attr:`ModelSource.recorded`), not a path that will be gone.
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radmtl.tracking.datasets import file_digest as sha256_of  # noqa: F401  (one SHA-256 of a file)
from radmtl.errors import RadmtlError
from radmtl.tracking.store import default_tracking_uri, is_http, probe_http, sqlite_path

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# Where a radmtl checkpoint sits inside an MLflow model folder: the pyfunc model's artifacts, or the
# extra files of the pytorch-flavour models older radmtl versions logged.
CHECKPOINT_FOLDERS = ("artifacts", "extra_files")
_DOWNLOADS: dict[Path, str] = {}  # temporary download folder -> the MLflow URI it holds
log = logging.getLogger(__name__)


class ModelNotFoundError(RadmtlError):
    """``--model`` names no model radmtl can use; the message says which and what to pass."""


def resolve_model_uri(uri: str, tracking_uri: str | None = None, dst_dir: Path | None = None) -> Path:
    """Return the radmtl checkpoint inside an MLflow model (downloaded only from a remote store).

    Args:
        uri: ``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
            ``models:/<model_id>`` or a local MLflow model folder.
        tracking_uri: the store to resolve ``runs:/``/``models:/`` against; None means
            :func:`default_tracking_uri`.
        dst_dir: copy the model here (even from a local store); None: read a local store in place,
            download a remote one into a temporary folder removed at exit.

    Raises:
        ModelNotFoundError: no store, the URI cannot be resolved, or the model carries no radmtl checkpoint.
    """
    local = Path(uri).expanduser()
    if local.is_dir() and dst_dir is None:
        return _checkpoint_in(local, uri)
    tracking_uri = tracking_uri or default_tracking_uri()
    _check_store(uri, tracking_uri)
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        location = str(local) if local.is_dir() else _artifact_location(client, uri)
        folder = _local_folder(location)
        if folder is None or dst_dir is not None:
            folder = _download(location, tracking_uri, dst_dir, uri)
    except RadmtlError:
        raise
    except Exception as err:  # noqa: BLE001 - MlflowException, OSError, bad URI: all user-fixable
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelNotFoundError(
            f"cannot fetch model {uri} from MLflow tracking at {tracking_uri} ({first_line}); "
            "check the run id or model name/version and --tracking-uri"
        ) from err
    return _checkpoint_in(folder, uri)


def _check_store(uri: str, tracking_uri: str) -> None:
    """Refuse, before MLflow touches it, a store that is down or does not exist (MLflow would create
    an empty ``mlflow.db`` wherever the lookup runs)."""
    if is_http(tracking_uri):
        reason = probe_http(tracking_uri)
        if reason is not None:
            raise ModelNotFoundError(f"cannot fetch model {uri}: MLflow tracking at {tracking_uri} unreachable "
                                     f"({reason}); start the server or pass another --tracking-uri")
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise ModelNotFoundError(
            f"cannot fetch model {uri}: no MLflow store at {tracking_uri} ({db} does not exist); run from the "
            "folder that holds the training's mlflow.db, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)")


def _artifact_location(client: Any, uri: str) -> str:
    """The artifact location (``file://``, ``mlflow-artifacts:``, ``s3://`` ...) of the model at ``uri``."""
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        name, _, rest = path.partition("/")
        run = client.get_run(run_id)
        page_token = None
        while True:  # MLflow 3: a run's model is a LoggedModel whose source is the run
            page = client.search_logged_models([run.info.experiment_id], filter_string=f"name = '{name}'",
                                               page_token=page_token)
            for model in page:
                if model.source_run_id == run_id:
                    return _join(model.artifact_location, rest)
            page_token = page.token
            if not page_token:
                break
        return _join(run.info.artifact_uri, path)  # a model stored among the run's own artifacts
    if uri.startswith("models:/"):
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        found = get_model_name_and_version(client, uri)
        if len(found) == 1:
            return client.get_logged_model(found[0]).artifact_location
        location = client.get_model_version_download_uri(*found)
        return _artifact_location(client, location) if location.startswith("models:/") else location
    return uri


def _join(base: str, rest: str) -> str:
    return f"{base.rstrip('/')}/{rest}" if rest else base


def _local_folder(location: str) -> Path | None:
    """The folder of a ``file://`` (or plain path) location on this machine, else None."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "" or re.match(r"^[A-Za-z]$", parsed.scheme):
        path = Path(location)
    else:
        return None
    return path if path.is_dir() else None


def _download(location: str, tracking_uri: str, dst_dir: Path | None, uri: str) -> Path:
    import mlflow.artifacts

    if dst_dir is None:
        target = Path(tempfile.mkdtemp(prefix="radmtl-model-"))
        _DOWNLOADS[target] = uri
    else:
        target = Path(dst_dir)
        target.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri,
                                                    dst_path=str(target)))


def _checkpoint_in(folder: Path, uri: str) -> Path:
    candidates = sorted(p for sub in CHECKPOINT_FOLDERS for p in (folder / sub).rglob("*")
                        if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not candidates:
        raise ModelNotFoundError(
            f"model {uri} holds no radmtl checkpoint (no *.pt in {folder}/artifacts or extra_files); "
            "was it logged by `radmtl train`?"
        )
    # A model logged by radmtl carries exactly one; prefer the conventional name if there are more.
    named = [p for p in candidates if p.name.startswith("checkpoint")]
    return (named or candidates)[0]


def release_downloads() -> None:
    """Delete the temporary folders that models from remote stores were downloaded into."""
    while _DOWNLOADS:
        folder, _ = _DOWNLOADS.popitem()
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(release_downloads)


def downloaded_from(path: Path) -> str | None:
    """The MLflow URI whose temporary download holds ``path``, or None for a lasting file."""
    path = Path(path).absolute()
    for folder, uri in _DOWNLOADS.items():
        if path.is_relative_to(folder):
            return uri
    return None


# "runs:/..", "models:/..", "s3://..": an MLflow URI rather than a file path (one-letter schemes
# would be Windows drive letters).
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


@dataclass(frozen=True)
class ModelSource:
    """Where the model came from (for provenance).

    Attributes:
        argument: ``--model`` as the user gave it.
        checkpoint: the local checkpoint file read (for a remote model: in a temporary folder).
        sha256: of the checkpoint file.
        recorded: what provenance should record as the checkpoint: its lasting absolute path, or
            ``<MLflow URI> (<file in the model>)`` for a temporary download; filled in when not given.
    """

    argument: str
    checkpoint: Path
    sha256: str
    recorded: str = field(default="")

    def __post_init__(self) -> None:
        if not self.recorded:
            uri = downloaded_from(self.checkpoint)
            text = f"{uri} ({self.checkpoint.name})" if uri else str(Path(self.checkpoint).resolve())
            object.__setattr__(self, "recorded", text)


def _checkpoint_of_folder(folder: Path, tracking_uri: str | None) -> Path:
    """A run folder of ``radmtl train`` → its ``checkpoint_best.pt``; an MLflow model folder → its checkpoint."""
    from radmtl.nn.checkpoint import BEST, LATEST

    if (folder / BEST).is_file():
        log.info("%s: a radmtl train run folder; using its %s", folder, BEST)
        return folder / BEST
    if (folder / "MLmodel").is_file() or any((folder / sub).is_dir() for sub in CHECKPOINT_FOLDERS):
        return resolve_model_uri(str(folder), tracking_uri)
    if (folder / LATEST).is_file():
        raise ModelNotFoundError(
            f"{folder}: a radmtl train run folder without {BEST} (no validation epoch has finished yet); pass "
            f"--model {folder / LATEST} for the last epoch's weights, or wait for the run to validate")
    raise ModelNotFoundError(
        f"{folder}: neither a radmtl train run folder (no {BEST}) nor an MLflow model folder (no MLmodel); pass "
        f"a checkpoint file such as RUN/{BEST}, a run folder, or an MLflow model URI (runs:/<id>/model)")


def resolve_checkpoint(model: str, tracking_uri: str | None = None) -> Path:
    """``--model`` → a local checkpoint path (MLflow URIs resolved, see the module docstring)."""
    local = Path(model).expanduser()
    if local.exists():
        if local.is_dir():
            return _checkpoint_of_folder(local, tracking_uri)
        return local
    if _URI_SCHEME.match(model):
        return resolve_model_uri(model, tracking_uri)
    raise ModelNotFoundError(f"{model}: model not found; pass a checkpoint file written by radmtl train or an "
                             "MLflow model URI (runs:/<id>/model, models:/<name>/<version>, models:/<name>@best)")
