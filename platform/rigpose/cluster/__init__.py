"""Ray clusters: connecting to one and submitting jobs to it."""
