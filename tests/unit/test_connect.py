"""rigpose.cluster.connect: stopping this process's own local Ray also drops the $RAY_ADDRESS `init_ray` set for
it (a process started afterwards inherited the address of a Ray that was gone and waited for its GCS forever: two
`rigpose retrain` processes a test started after another module's Ray hung for 7 minutes), and never a user's."""

from __future__ import annotations

import os

import pytest

from rigpose.cluster.connect import init_ray, shutdown_ray


def test_stopping_our_own_local_ray_drops_the_address_it_set_and_keeps_a_users(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray of another test is connected in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(None)
    assert os.environ["RAY_ADDRESS"] == ray.get_runtime_context().gcs_address  # for this process's own lookups
    shutdown_ray()
    assert not ray.is_initialized() and "RAY_ADDRESS" not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a user's cluster: theirs to keep
    shutdown_ray()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"
