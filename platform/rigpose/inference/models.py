"""Load a lifter for inference from a run folder, a `model.pt` file or an MLflow `models:/` / `runs:/` URI."""

from __future__ import annotations

from typing import Any

from rigpose.model.lifter import Lifter
from rigpose.skeleton import Skeleton
from rigpose.tracking.runs import is_model_uri  # not .registry: that imports mlflow (~1 s), model files need none


def load_model(model: str, *, tracking_uri: str | None = None, registry_uri: str | None = None
               ) -> tuple[Lifter, Skeleton, dict[str, Any]]:
    """(lifter in eval mode, skeleton, meta) from an MLflow model URI (models:/..., runs:/...) or a model file.

    `tracking_uri` / `registry_uri`: where a registry URI is resolved (MLflow's current URIs when None).
    """
    if not is_model_uri(model):
        from rigpose.model.checkpoint import load_lifter

        return load_lifter(model)
    from rigpose.tracking.registry import load_pyfunc_lifter
    from rigpose.tracking.runs import mlflow_uri

    with mlflow_uri(tracking_uri, registry_uri):
        inner = load_pyfunc_lifter(model)
    inner.model.eval()
    return inner.model, inner.skeleton, dict(inner.meta)
