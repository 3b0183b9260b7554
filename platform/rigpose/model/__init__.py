"""The lifter, its losses and multi-view inference. Pure PyTorch: nothing here imports Ray, MLflow or storage."""
