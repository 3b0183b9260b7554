"""Using a trained lifter: load it, lift datasets in process or on Ray Data, evaluate, plot, export to ONNX."""
