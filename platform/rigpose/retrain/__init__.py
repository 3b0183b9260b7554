"""Retraining: new rigs in, a label-free gate decides promotion."""
