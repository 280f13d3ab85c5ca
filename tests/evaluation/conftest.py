"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture
def review_case() -> dict:
    """The inputs of the review figure: an ellipsoid body with two organs, σ_total high in a blob
    away from the centre and flagged there, and the review.json summary of the case.

    Volumes (40, 32, 24) at 1.5 × 1.5 × 2.5 mm; the flagged blob is the 5³ voxels [26:31, 8:13, 14:19],
    centred on (28, 10, 16), inside the body, whose centre is (20, 16, 12).
    """
    shape = (40, 32, 24)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((x - 20) / 18) ** 2 + ((y - 16) / 14) ** 2 + ((z - 12) / 14) ** 2 < 1
    labels = np.zeros(shape, dtype=np.uint8)
    labels[((x - 20) ** 2 + (y - 18) ** 2 + (z - 12) ** 2) < 16] = 1
    labels[((x - 20) ** 2 + (y - 10) ** 2 + (z - 12) ** 2) < 6] = 2
    mr = np.where(body, 400.0, 0.0) + 300.0 * (labels == 1) + np.random.default_rng(0).normal(0.0, 10.0, shape)
    sct = np.where(body, 30.0, -1000.0).astype(np.float32)
    sigma = np.where(body, 40.0, 0.0).astype(np.float32)
    sigma[26:31, 8:13, 14:19] = 300.0
    flagged = (sigma > 200.0) & body
    summary = {
        "case": "case_001", "verdict": "review",
        "reasons": ["0.7 ml of the body has σ_total above 200 HU", "rectum: p95 σ_total above threshold"],
        "organs": {"bladder": {"volume_ml": 1.8, "mean_sigma_total_hu": 40.0, "p95_sigma_total_hu": 40.0,
                               "flags": []},
                   "rectum": {"volume_ml": 0.23, "mean_sigma_total_hu": 41.5, "entropy": 0.0123,
                              "flags": ["sigma_p95"]}},
        "flagged_fraction_body": float(flagged[body].mean()),
        "thresholds": {"sigma_total_hu": 200.0},
    }
    return {"mr": mr, "sct_hu": sct, "sigma_total_hu": sigma, "labels": labels, "flagged": flagged, "body": body,
            "spacing": (1.5, 1.5, 2.5), "label_names": {"bladder": 1, "rectum": 2}, "summary": summary}
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
