"""Starting one part of the local stack (infra/local/stack.py `start`): a start that fails in a way the part calls
transient (Ray's raylet missing its fixed 30 s to register on a loaded machine) is tried again and the part comes
up; any other failure is reported at once, with the end of the part's log. The part here is a real process."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from rigpose_testing import REPO

sys.path.insert(0, str(REPO / "infra" / "local"))
import services  # infra/local is scripts, not a package
import stack

# fails on its first `fail_times` runs (counting them in a file), printing `message`; then serves until stopped
SCRIPT = """
import pathlib, sys, time
runs = pathlib.Path(sys.argv[1]); n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
if n <= int(sys.argv[2]):
    print(sys.argv[3], flush=True); sys.exit(1)
pathlib.Path(sys.argv[4]).write_text("up")
time.sleep(120)
"""


@dataclass
class Flaky(services.Part):
    fail_times: int = 0
    message: str = ""

    def command(self) -> list[str]:
        state = self.settings.state_dir
        return [sys.executable, "-c", SCRIPT, str(state / "runs"), str(self.fail_times), self.message,
                str(state / "ready")]

    def health(self) -> services.Health:
        ready = (self.settings.state_dir / "ready").exists()
        return services.Health(ready, "ready" if ready else "not yet")

    def transient(self, log_tail: str) -> bool:
        return "timed out during startup" in log_tail


def flaky(tmp_path: Path, fail_times: int, message: str) -> Flaky:
    settings = services.Settings(state_dir=tmp_path)
    creds = services.Credentials("k", "s", tmp_path / "token")
    return Flaky("flaky", settings, creds, startup_timeout_s=30.0, fail_times=fail_times, message=message)


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_a_transient_start_failure_is_tried_again_until_the_part_is_up(tmp_path: Path) -> None:
    part = flaky(tmp_path, 2, "Exception: The current node timed out during startup.")
    record = stack.start(part)
    try:
        assert runs(tmp_path) == 3 and (tmp_path / "ready").exists()
        assert stack.members(part, record, stack.procs.process_table())  # the third start is the one running
    finally:
        assert stack.stop(part, record) >= 1


def test_transient_failures_give_up_after_the_attempts_and_name_the_log(tmp_path: Path) -> None:
    part = flaky(tmp_path, 99, "Exception: The current node timed out during startup.")
    with pytest.raises(stack.StackError, match=r"(?s)flaky exited with code 1 while starting.*timed out"):
        stack.start(part)
    assert runs(tmp_path) == stack.START_ATTEMPTS


def test_any_other_start_failure_is_reported_at_once(tmp_path: Path) -> None:
    part = flaky(tmp_path, 1, "bind: address already in use")
    with pytest.raises(stack.StackError, match="address already in use"):
        stack.start(part)
    assert runs(tmp_path) == 1
