"""Tracking: MLflow behind a small interface, and the environment/provenance tags of a run.

Public pieces are imported on first access (:mod:`radmtl._lazy`), so importing one module of
this package does not import the others.
"""

from radmtl._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "Tracker": "tracker", "NullTracker": "tracker", "start_tracking": "tracker", "make_run_name": "tracker",
    "default_tracking_uri": "store", "sqlite_write_problem": "store",
    "run_tags": "environment", "package_version": "environment",
    "log_case_datasets": "datasets", "register_model": "registry", "check_model_name": "registry",
})
