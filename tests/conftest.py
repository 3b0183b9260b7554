"""Shared pytest fixtures (helpers importable by name live in tests/rigpose_testing.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

# `mlflow server` (3.x) starts about ten job-runner processes (huey consumers) for GenAI jobs that rigpose never
# submits; on 2 cores they make every server start cost tens of CPU-seconds. The tests' servers run without them.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
