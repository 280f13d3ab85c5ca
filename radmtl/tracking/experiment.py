"""The MLflow experiment a training run goes into: found, or made where `mlflow ui` can show it."""

from __future__ import annotations

from typing import Any

from radmtl.errors import RadmtlError
from radmtl.tracking.store import sqlite_path

# The experiment kind MLflow 3's UI reads (mlflow/server/js: "mlflow.experimentKind", values
# "genai_development" | "custom_model_development" | ...): radmtl trains models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def get_or_create_experiment(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, made (artifacts beside a SQLite database,
    tagged as a model-training experiment) when missing.

    Raises:
        RadmtlError: the experiment exists but is deleted.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db = sqlite_path(uri)
        # Without an explicit location MLflow uses ./mlruns of the *current* folder, which a later
        # `mlflow ui` started elsewhere cannot find; beside the database it always can.
        location = (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            # Another process (a second training) may have created it in between.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise RadmtlError(
            f"MLflow experiment {name!r} at {uri} is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or choose another --experiment"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by hand or by an older radmtl; a kind set by a user stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id
