"""Kept for models already in a registry: versions logged before the reorganisation carry a code file that runs
`from rigpose.registry import LifterModel` when MLflow loads them. New code imports `rigpose.tracking.pyfunc`."""

from rigpose.tracking.pyfunc import LifterModel

__all__ = ["LifterModel"]
