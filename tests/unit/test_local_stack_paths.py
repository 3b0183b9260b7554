"""The local stack's Ray folders (infra/local/services.py `Settings.ray_root`): wherever the project is cloned, every
Unix socket Ray opens under them fits the 107-byte limit (a clone at /tmp/fc17/repo once failed `make up` because
the dashboard's socket was 108 bytes), and a short state folder keeps them inside itself."""

from __future__ import annotations

import sys
from pathlib import Path

from rigpose_testing import REPO

sys.path.insert(0, str(REPO / "infra" / "local"))
import services  # infra/local is scripts, not a package

# the longest socket Ray opens under a node's --temp-dir: a 7-digit pid, the dashboard's longest module name
LONGEST = "/session_2026-12-07_08-18-21_589868_4194304/sockets/dash_TaskEventsHead"


def test_every_ray_socket_fits_the_limit_for_a_state_folder_of_any_length() -> None:
    for n in range(1, 120):
        state = Path("/" + "d" * n) / ".state"
        root = services.Settings(state_dir=state).ray_root
        for node in ("ray-head", "ray-node2"):
            assert len(str(root / node) + LONGEST) <= 107, (state, root)


def test_a_short_state_folder_keeps_its_ray_folders_and_a_deep_clone_gets_one_of_its_own_under_tmp() -> None:
    assert services.Settings(state_dir=Path("/srv/rp/.state")).ray_root == Path("/srv/rp/.state")
    deep = [services.Settings(state_dir=Path(f"/home/alice/projects/rigs/{c}/infra/local/.state")).ray_root
            for c in ("rigpose", "rigpose-2")]
    assert all(r.parent == Path("/tmp") for r in deep) and deep[0] != deep[1]  # one per state folder
    assert services.Settings(state_dir=Path("/tmp/fc17/repo/infra/local/.state")).ray_root.parent == Path("/tmp")
