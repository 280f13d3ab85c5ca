"""Evaluation: image and segmentation metrics, uncertainty calibration, uncertainty as an error
detector, `radmtl evaluate`, plots, QA pictures, and the per-case review (its rule and figure).

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "image_metrics": "metrics", "segmentation_metrics": "metrics", "mae_hu": "metrics", "dice": "metrics", "summarise": "metrics",
    "uncertainty_metrics": "calibration", "zscore_stats": "calibration", "coverage": "calibration", "calibration_curve": "calibration", "spearman": "calibration",
    "auroc": "detection", "average_precision": "detection", "risk_coverage": "detection",
    "sct_error_detection": "detection", "seg_error_detection": "detection",
    "evaluate": "evaluate", "evaluate_from_cli": "evaluate", "Evaluation": "evaluate",
    "calibration_plot": "plots", "error_vs_sigma_plot": "plots", "risk_coverage_plot": "plots",
    "qa_images": "qa", "training_curves": "qa",
    "write_review_figure": "review_figure", "worst_flagged_region": "flagged_region",
    "review_case": "review", "fit_review_thresholds": "review", "ReviewThresholds": "review",
})
