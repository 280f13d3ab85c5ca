"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def mlflow_run(tmp_path) -> SimpleNamespace:
    """An empty MLflow run in a SQLite store under ``tmp_path``, for ``radmtl evaluate --run-id``:
    ``uri``, ``client`` and ``run_id``, and ``args``, the ``--run-id``/``--tracking-uri`` options naming it."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("evaluation", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    return SimpleNamespace(uri=uri, client=client, run_id=run_id, args=["--run-id", run_id, "--tracking-uri", uri])
