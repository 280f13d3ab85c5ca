"""Inference: sliding window × MC dropout on the network grid, resampling back to the input grid,
`radmtl infer` (with its DICOM outputs, and a cohort shared out over several processes), and where a model
comes from.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "predict_volume": "predict", "window_statistics": "predict", "finalize": "predict",
    "resample_to_grid": "resample", "argmax_labels_on_grid": "resample",
    "run_inference": "infer", "InferOptions": "infer_options", "CaseResult": "infer",
    "infer_from_cli": "infer_cli", "deal_cases": "cohort",
    "resolve_checkpoint": "model_uri", "ModelSource": "model_uri",
    "write_dicom_outputs": "dicom_out",
    "find_cases": "inputs", "check_mr": "inputs",
    "predict_on_network_grid": "case_maps", "map_to_input_grid": "case_maps",
    "RadmtlModel": "pyfunc_model",
})
