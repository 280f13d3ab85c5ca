"""Errors of the dose evaluation, each one clear line for the CLI (:class:`radmtl.errors.RadmtlError`)."""

from __future__ import annotations

from radmtl.errors import RadmtlError

# What the set-up scripts run; said whenever the optional engine or γ library is missing.
INSTALL_HINT = ('pip install "radmtl[dose]" && pip install --no-deps "pyradplan==0.5.0" '
                "(scripts/setup.sh does both)")


class DoseError(RadmtlError, ValueError):
    """Bad input to the dose evaluation: a table, a grid, a structure or a plan a user can fix."""


class DoseDependencyError(RadmtlError, ImportError):
    """pyRadPlan or pymedphys is not installed (or fails on import); the message says how to install it."""
