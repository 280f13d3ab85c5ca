"""Where a model comes from: ``--model`` as a checkpoint file, a local MLflow model folder or an
MLflow URI, resolved to a local radmtl checkpoint (and its hash, for provenance).

``radmtl infer --model runs:/<id>/model`` rebuilds the network from the checkpoint that travels
with the logged model (``extra_files/``), never by unpickling the logged module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from radmtl.errors import RadmtlError
from radmtl.tracking.tracker import default_tracking_uri, is_http, probe_http

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def resolve_model_uri(uri: str, tracking_uri: str | None = None, dst_dir: Path | None = None) -> Path:
    """Download an MLflow model and return the path of the radmtl checkpoint inside it.

    Args:
        uri: ``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<model_id>`` or
            a local MLflow model folder.
        tracking_uri: the store to resolve ``runs:/``/``models:/`` against; None means
            :func:`default_tracking_uri`.
        dst_dir: where to download to; None means a fresh temporary folder.

    Raises:
        RadmtlError: the URI cannot be resolved or the model carries no radmtl checkpoint.
    """
    import mlflow.artifacts
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    if is_http(tracking_uri):
        reason = probe_http(tracking_uri)
        if reason is not None:
            raise RadmtlError(f"cannot fetch model {uri}: MLflow tracking at {tracking_uri} unreachable ({reason})")
    if dst_dir is not None:
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
    try:
        # MLflow 3.17 resolves a run's logged model ("runs:/<id>/model") through a client built
        # from the *global* tracking URI (./mlflow.db of the current folder) whatever is passed
        # here, and then reports the model missing; so the global URI is pointed at the store too.
        with _use_tracking_uri(tracking_uri):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    tracking_uri=tracking_uri,
                    registry_uri=tracking_uri,
                    dst_path=str(dst_dir) if dst_dir is not None else None,
                )
            )
    except Exception as err:  # noqa: BLE001 - MlflowException, OSError, bad URI: all user-fixable
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RadmtlError(
            f"cannot fetch model {uri} from MLflow tracking at {tracking_uri} ({first_line}); "
            "check the run id or model name/version and --tracking-uri"
        ) from err
    extra = local / "extra_files"
    candidates = sorted(p for p in extra.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if not candidates:
        raise RadmtlError(
            f"model {uri} holds no radmtl checkpoint (no *.pt in {extra}); "
            "was it logged by `radmtl train`?"
        )
    # A model logged by radmtl carries exactly one; prefer the conventional name if there are more.
    named = [p for p in candidates if p.name.startswith("checkpoint")]
    return (named or candidates)[0]


# "runs:/..", "models:/..", "s3://..": an MLflow URI rather than a file path (one-letter schemes
# would be Windows drive letters).
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


@dataclass(frozen=True)
class ModelSource:
    """Where the model came from (for provenance)."""

    argument: str
    checkpoint: Path
    sha256: str


def resolve_checkpoint(model: str, tracking_uri: str | None = None) -> Path:
    """``--model`` → a local checkpoint path (MLflow URIs are downloaded)."""
    local = Path(model).expanduser()
    if local.exists():
        if local.is_dir():
            return resolve_model_uri(str(local), tracking_uri)
        return local
    if _URI_SCHEME.match(model):
        return resolve_model_uri(model, tracking_uri)
    raise RadmtlError(f"{model}: model not found; pass a checkpoint file written by radmtl train or an "
                      "MLflow model URI (runs:/<id>/model, models:/<name>/<version>)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
