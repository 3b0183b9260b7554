"""Data layer: motion sources, schema v1, sharded Parquet storage with a manifest, ingest and the Ray Data pipeline."""
