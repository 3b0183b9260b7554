"""Our local Ray (`rigpose.cluster.connect.init_ray`) works beside another Ray on the same machine.

Code that looks a cluster up by itself (the state API that Ray Train's placement-group cleaner polls from inside
the cluster, `ray.util.state.get_actor` with no address) would otherwise find both GCS processes and fail with
"Found multiple active Ray instances". The other Ray is a `ray start --head` of this test, in its own temp folder,
stopped by its own pids at the end (never `ray stop`, which stops every Ray on the machine).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigpose_testing import RAY_STOP_GRACE_S, free_port, processes_with, stop_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def other_ray() -> Iterator[None]:
    temp_dir = tempfile.mkdtemp(prefix="rp-other-", dir="/tmp")
    port = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats", f"--temp-dir={temp_dir}"], check=True, capture_output=True, timeout=180)
    try:
        yield
    finally:
        left = stop_processes(processes_with(temp_dir, f":{port} "), timeout_s=RAY_STOP_GRACE_S)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"the other Ray's processes still run: {sorted(left)}"


def test_the_state_api_finds_our_own_cluster_from_the_driver_and_from_inside(other_ray: None) -> None:
    import ray
    from ray.util.state import get_actor

    from rigpose.cluster.connect import init_ray

    init_ray(None)
    try:
        @ray.remote(num_cpus=0)
        class Probe:
            def state_of(self, actor_id: str) -> str:
                return get_actor(actor_id, timeout=20).state  # no address: as Ray Train's cleaner asks

        probe = Probe.remote()
        actor_id = probe._actor_id.hex()
        assert ray.get(probe.state_of.remote(actor_id)) == "ALIVE"
        assert get_actor(actor_id, timeout=20).state == "ALIVE"
    finally:
        ray.shutdown()
