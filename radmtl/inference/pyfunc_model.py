"""radmtl as an MLflow pyfunc model: MR files in, sCT/segmentation/σ files on each MR's own grid out.

``radmtl train`` logs this model (``runs:/<run_id>/model``) so that it serves without radmtl's CLI:

    mlflow models predict -m runs:/<run_id>/model -i input.json -t json --env-manager local

with ``input.json`` = ``{"dataframe_records": [{"mr": "/data/case_001/mr.nii.gz", "output": "/data/pred"}]}``.
Each record names an MR (a volume file, or a folder that ``radmtl infer --input`` accepts) and an output
folder, optionally ``mc_samples``; :meth:`RadmtlModel.predict` runs :func:`radmtl.inference.infer.run_inference`
on it — the training preprocessing, Gaussian sliding window, MC dropout, resampling onto the input grid —
and answers one row per case: the written files and summary figures (see :data:`OUTPUT_COLUMNS`).

What the logged model holds: the self-describing radmtl checkpoint as the artifact ``checkpoint`` (read
with ``torch.load(weights_only=True)``: no pickled classes) and this module's class by reference, through
MLflow's "models from code" (a three-line script, :data:`MODEL_CODE`, instead of a cloudpickled object).
Its requirements name ``radmtl==<version>``, torch and MONAI: the serving environment must have radmtl
installed (``pip install`` of this repository). Relative paths in a request are taken from the serving
process's working folder.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
INPUT_COLUMNS = ("mr", "output", "mc_samples")
OUTPUT_COLUMNS = ("case", "folder", "sct", "seg", "sigma", "provenance", "mc_samples", "seconds", "error")
# Paths a user replaces; an example that does not exist also keeps MLflow's check of the example at
# logging time (it runs predict) from writing anything.
INPUT_EXAMPLE = [{"mr": "/path/to/case_001/mr.nii.gz", "output": "/path/to/predictions", "mc_samples": 20}]
MODEL_CODE = '''"""radmtl's MLflow model: the class lives in the installed radmtl package."""
from mlflow.models import set_model

from radmtl.inference.pyfunc_model import RadmtlModel

set_model(RadmtlModel())
'''


class RadmtlModel(mlflow.pyfunc.PythonModel):
    """``predict`` = ``radmtl infer`` per record; see the module docstring."""

    def load_context(self, context: Any) -> None:
        self.checkpoint = Path(context.artifacts[CHECKPOINT_ARTIFACT])
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: the model's radmtl checkpoint is missing")

    # A DataFrame hint: MLflow infers no schema of its own from it (the signature is the schema).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run every record of ``model_input``; returns a DataFrame with :data:`OUTPUT_COLUMNS`.

        Args:
            model_input: a DataFrame, a list of records or one record with ``mr`` and ``output``
                (and optionally ``mc_samples``, the MC dropout samples T: a whole number from 1 to
                :data:`radmtl.config.MAX_MC_SAMPLES`; left out, the model's).

        A record that fails, or that cannot be run as given (no ``mr``/``output``, an ``mc_samples`` that is
        not a whole number in range), gives a row with ``error`` set (what, which record or file, how to fix)
        and the other records still run; nothing is written under a case's final folder unless it is
        complete. The signature lets every record through to here, so that MLflow's schema check does not
        answer with a traceback first.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(
            [model_input] if isinstance(model_input, dict) else list(model_input))
        rows: list[dict[str, Any]] = []
        for number, record in enumerate(frame.to_dict(orient="records"), start=1):
            problem, mr, output, mc_samples = _read_record(record)
            if problem is not None:
                name = Path(mr).name if mr else f"record {number}"
                rows.append(_row(name, error=f"record {number}: {problem}"))
                continue
            rows.extend(self._run(mr, output, mc_samples))
        # object columns keep a missing value as None (JSON null) and whole numbers as ints
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)

    def _run(self, mr: str, output: str, mc_samples: int | None) -> list[dict[str, Any]]:
        from radmtl.errors import RadmtlError
        from radmtl.inference.infer import InferOptions, run_inference
        from radmtl.inference.output_folders import case_folder

        if not Path(mr).exists():
            return [_row(Path(mr).name, error=f"{mr}: MR not found; give the path of an MR volume file "
                                              "(absolute, or relative to the serving process's folder)")]
        try:
            # A request is answered with a fresh result, as before radmtl infer learnt to skip published cases.
            results = run_inference(str(self.checkpoint), mr, output, InferOptions(mc_samples=mc_samples,
                                                                                   overwrite=True))
        except RadmtlError as err:
            return [_row(Path(mr).name, error=str(err))]
        rows = []
        for result in results:
            if result.error:
                rows.append(_row(result.case_id, seconds=result.seconds, error=result.error))
                continue
            folder = case_folder(Path(output), result.case_id).absolute()
            rows.append(_row(result.case_id, folder=folder, seconds=result.seconds, files=result.outputs))
        return rows


def _read_record(record: dict[str, Any]) -> tuple[str | None, str | None, str | None, int | None]:
    """``(problem, mr, output, mc_samples)`` of one request record; ``problem`` says what is wrong with it, in
    the pyfunc's own terms (the columns, not radmtl infer's options)."""
    from radmtl.config import mc_samples_problem

    texts = {}
    for column, what in (("mr", "an MR file"), ("output", "an output folder")):
        value = record.get(column)
        if _missing(value) or not isinstance(value, str) or not value.strip():
            example = json.dumps(INPUT_EXAMPLE[0])
            got = "none" if _missing(value) else repr(value)
            return (f"'{column}' must be the path of {what} as a string, got {got}; give records like {example}",
                    texts.get("mr"), None, None)
        texts[column] = value
    value = record.get("mc_samples")
    if _missing(value):
        return None, texts["mr"], texts["output"], None
    problem = mc_samples_problem(value)
    if problem is not None:
        return (f"'mc_samples' (the MC-dropout samples T) {problem}; give a whole number, or leave 'mc_samples' "
                "out for the model's own", texts["mr"], texts["output"], None)
    return None, texts["mr"], texts["output"], int(value)


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _row(case: str, folder: Path | None = None, seconds: float = 0.0, files: list[str] | None = None,
         error: str | None = None) -> dict[str, Any]:
    from radmtl.data.io import strip_volume_suffix

    by_stem = {strip_volume_suffix(name): folder / name for name in files or []} if folder else {}
    sigma = by_stem.get("sct_sigma_total") or by_stem.get("sct_sigma_aleatoric")
    provenance = folder / "provenance.json" if folder is not None else None
    mc_samples = None
    if provenance is not None and provenance.is_file():
        mc_samples = json.loads(provenance.read_text())["inference"]["mc_samples"]
    return {"case": case, "folder": str(folder) if folder else None,
            **{key: str(by_stem[key]) if key in by_stem else None for key in ("sct", "seg")},
            "sigma": str(sigma) if sigma else None, "provenance": str(provenance) if provenance else None,
            "mc_samples": mc_samples, "seconds": round(float(seconds), 3), "error": error}


def signature() -> Any:
    """Input and output schema of :meth:`RadmtlModel.predict`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    # Any type, none required: MLflow's schema check would answer a record without 'mr', an mc_samples of
    # "four" (or 2.7, or one left out of some records) with a traceback; predict refuses each such record
    # in one line of its own, naming the column.
    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in INPUT_COLUMNS])
    outputs = Schema([ColSpec("string", "case")]
                     + [ColSpec("string", name, required=False) for name in OUTPUT_COLUMNS[1:6]]
                     + [ColSpec("long", "mc_samples", required=False), ColSpec("double", "seconds"),
                        ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    """What the serving environment needs: radmtl itself (which brings the rest), torch and MONAI."""
    import torch

    import radmtl
    from radmtl.tracking.environment import package_version

    return [f"radmtl=={radmtl.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"monai=={package_version('monai')}"]


@contextmanager
def servable_model(checkpoint: Path) -> Iterator[dict[str, Any]]:
    """The arguments of ``mlflow.pyfunc.log_model`` for the radmtl model of ``checkpoint``.

    Yields a dict (python_model, artifacts, signature, input_example, pip_requirements, metadata)
    that stays valid inside the ``with`` block: the model code is a temporary file.
    """
    import radmtl

    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    with tempfile.TemporaryDirectory(prefix="radmtl-model-code-") as folder:
        code = Path(folder) / "radmtl_model.py"
        code.write_text(MODEL_CODE)
        yield {
            "python_model": str(code),
            "artifacts": {CHECKPOINT_ARTIFACT: str(checkpoint)},
            "signature": signature(),
            "input_example": INPUT_EXAMPLE,
            "pip_requirements": requirements(),
            "metadata": {"radmtl_version": radmtl.__version__, "checkpoint": checkpoint.name},
        }


def log_servable_model(tracker: Any, checkpoint: Path) -> str | None:
    """Log the model of ``checkpoint`` into ``tracker``'s MLflow run as ``model``; returns its URI.

    A failure is one warning and None: the checkpoint on disk holds everything, MLflow is a copy.
    """
    if tracker.client is None:
        return None
    try:
        with servable_model(checkpoint) as spec:
            return tracker.log_model(**spec)
    except Exception as err:  # noqa: BLE001 - never lose a finished training to a logging problem
        log.warning("could not log the model to MLflow (%s: %s); %s has everything", type(err).__name__, err,
                    checkpoint)
        return None
