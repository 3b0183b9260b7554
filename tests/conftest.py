"""Shared pytest fixtures (helpers importable by name live in tests/rigpose_testing.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
