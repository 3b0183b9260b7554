"""The one error of `rigpose.detect` besides bad input (ValueError): a detector that cannot run here."""

from __future__ import annotations

EXTRA_HINT = "pip install 'rigpose[detect]'"


class DetectorUnavailableError(RuntimeError):
    """A detector's package or weights are missing; the message says what to install or where to put the file."""
