"""MLflow only: tracked runs, the model registry and its aliases, the pyfunc model, credential scrubbing."""
