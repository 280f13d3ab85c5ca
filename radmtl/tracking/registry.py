"""``radmtl train --register NAME``: the run's logged model as a new version in MLflow's Model Registry.

Each registration adds a version of ``NAME`` with tags that say how good it is and on what: every
validation metric of the best epoch (``val_mae_hu``, ``val_dice_mean``, ...), the metric and epoch that
chose it (``radmtl.best_metric``, ``radmtl.best_mode``, ``radmtl.best_epoch``), the data digest of the
cases it trained and validated on (``radmtl.data_digest``, see :mod:`radmtl.tracking.datasets`) and the
radmtl version.

The alias ``best`` (``models:/NAME@best``) points at the version with the best value of its best
metric: a new version takes it when no version holds it yet, or when it was chosen by the same metric and
is better (lower for ``min``, higher for ``max``). A version chosen by another metric is not compared and
leaves the alias where it is (one log line says so). ``models:/NAME/latest`` is MLflow's own name for the
newest version ("latest" cannot be an alias).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radmtl.errors import RadmtlError
from radmtl.tracking.datasets import DATA_DIGEST_TAG
from radmtl.tracking.metrics_file import read_records

log = logging.getLogger(__name__)

BEST_ALIAS = "best"
BEST_METRIC_TAG = "radmtl.best_metric"
BEST_MODE_TAG = "radmtl.best_mode"
BEST_EPOCH_TAG = "radmtl.best_epoch"


class RegistryError(RadmtlError):
    """A registered-model name MLflow would refuse; raised before training starts."""


@dataclass(frozen=True)
class Registration:
    """What ``--register`` did: the version made, and which version the ``best`` alias points at."""

    name: str
    version: str
    best_version: str | None

    def line(self) -> str:
        where = ("this version" if self.best_version == self.version
                 else f"version {self.best_version}" if self.best_version else "no version")
        return (f"registered model {self.name} version {self.version} (models:/{self.name}/{self.version}); "
                f"alias @{BEST_ALIAS} on {where}")


def check_model_name(name: str) -> None:
    """Refuse a name MLflow's registry (or a ``models:/NAME@ALIAS`` URI) cannot hold.

    Raises:
        RegistryError: the name is empty, has surrounding spaces, or contains ``/``, ``:`` or ``@``.
    """
    bad = [c for c in "/:@" if c in name]
    if not name.strip() or name != name.strip() or bad:
        why = f"contains {' '.join(repr(c) for c in bad)}" if bad else "is empty or has surrounding spaces"
        raise RegistryError(f"--register {name!r}: the registered model name {why}; use letters, digits, "
                            "'-', '_' or '.', e.g. --register radmtl-pelvis")


def best_epoch_metrics(metrics_jsonl: Path, best_epoch: int | None) -> dict[str, float]:
    """The validation metrics (``val_*``) logged for ``best_epoch`` in ``metrics.jsonl``."""
    found: dict[str, float] = {}
    if best_epoch is None or not Path(metrics_jsonl).is_file():
        return found
    for record in read_records(metrics_jsonl):
        if record.get("epoch") == best_epoch:
            found.update({k: float(v) for k, v in record.items() if k.startswith("val_")})
    return found


def _better(value: float | None, holder: Any, metric: str, mode: str) -> bool | None:
    """Whether ``value`` beats the alias holder's; None when the two cannot be compared."""
    if holder.tags.get(BEST_METRIC_TAG) != metric:
        return None
    try:
        theirs = float(holder.tags.get(metric, "nan"))
    except ValueError:
        theirs = math.nan
    if value is None or not math.isfinite(value):
        return False
    if not math.isfinite(theirs):
        return True
    return value < theirs if mode == "min" else value > theirs


def register_model(tracker: Any, name: str, model_uri: str | None, best_metric: str, best_mode: str,
                   best_epoch: int | None) -> Registration | None:
    """Register ``model_uri`` (the run's logged model) as a new version of ``name``; move ``@best``.

    Failures are one warning (the model stays logged in the run, and the warning says how to register
    it by hand): training has finished by now and its results are on disk and in MLflow.

    Returns:
        What was registered, or None when nothing was.
    """
    if tracker.client is not None and getattr(tracker, "offline", False):
        log.warning("--register %s: not registered yet, the MLflow store does not answer; `radmtl train "
                    "--sync-mlflow` logs and registers the model once it does (see below)", name)
        return None
    if tracker.client is None or model_uri is None:
        log.warning("--register %s: not registered, the run has no model in MLflow (see the warnings above)",
                    name)
        return None
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    import radmtl

    client = tracker.client
    metrics = best_epoch_metrics(tracker.metrics_jsonl, best_epoch)
    try:
        run = client.get_run(tracker.run_id)
        tags = {**{key: f"{value:.6g}" for key, value in metrics.items()},
                BEST_METRIC_TAG: best_metric, BEST_MODE_TAG: best_mode, BEST_EPOCH_TAG: str(best_epoch),
                DATA_DIGEST_TAG: run.data.tags.get(DATA_DIGEST_TAG, "unknown"), "radmtl.version": radmtl.__version__}
        # The registry checks a models:/<id> source through the *global* tracking URI, whatever the client's.
        with _use_tracking_uri(tracker.uri):
            version = _register(client, name, model_uri, tracker.run_id, tags)
        best_version = _move_best_alias(client, name, version, metrics.get(best_metric), best_metric, best_mode)
    except Exception as err:  # noqa: BLE001 - any store failure: the run and its model stay as they are
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("--register %s: could not register %s in the Model Registry at %s (%s); register it "
                    "later: python -c \"import mlflow; mlflow.set_tracking_uri('%s'); "
                    "mlflow.register_model('%s', '%s')\"", name, model_uri, tracker.uri, first, tracker.uri,
                    model_uri, name)
        log.debug("registry failure details", exc_info=True)
        return None
    return Registration(name, str(version.version), best_version)


def _register(client: Any, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="radmtl: MR -> synthetic CT + organ segmentation "
                                                         "with uncertainty (an MLflow pyfunc model)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/") else None
    return client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)


def _move_best_alias(client: Any, name: str, version: Any, value: float | None, metric: str,
                     mode: str) -> str | None:
    """Point ``@best`` at ``version`` when it is the best (see the module docstring); returns the holder."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException:
        holder = None
    better = True if holder is None else _better(value, holder, metric, mode)
    if better:
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
        return str(version.version)
    if better is None:
        log.info("%s: alias @%s stays on version %s, chosen by %s, which version %s (chosen by %s) is not "
                 "compared with", name, BEST_ALIAS, holder.version, holder.tags.get(BEST_METRIC_TAG), version.version,
                 metric)
    return str(holder.version)
