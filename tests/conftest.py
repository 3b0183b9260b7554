"""Shared pytest fixtures: reference cameras built from the published Human3.6M calibration and a seeded RNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
