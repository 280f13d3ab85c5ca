"""radmtl: multi-task MR→synthetic-CT and organ segmentation with calibrated uncertainty."""

__version__ = "0.1.0"
