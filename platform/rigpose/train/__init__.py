"""Training: the per-worker loop (no Ray inside the math), the Ray Train TorchTrainer wiring, checkpoints."""
