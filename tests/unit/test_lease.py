"""The storage lease (rigpose.storage.Lease) on local disk: racing processes hold it one at a time, with conditional
writes and with the write/settle/read-back protocol; a killed holder's lease lapses at its expiry and not before;
renew extends it, release by a non-holder does nothing, and a held lease fails at once with wait_s=0."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from rigpose_testing import lease_holds, lease_racer

from rigpose.storage import Lease, LeaseHeld, LeaseLost, url_to_fs

MODES = {"exclusive": True, "settle": False}


def _lease(url: str, owner: str, *, ttl_s: float = 30.0, wait_s: float = 0.0, mode: str = "exclusive") -> Lease:
    fs, path = url_to_fs(url)
    return Lease(fs, path, owner=owner, ttl_s=ttl_s, wait_s=wait_s, exclusive=MODES[mode], settle_s=0.1)


def _objects(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("lease*.json"))


@pytest.mark.parametrize("mode", list(MODES))
def test_racing_processes_hold_the_lease_one_at_a_time_and_all_get_it(tmp_path: Path, mode: str) -> None:
    """N=3 processes start at one moment (a barrier) and take the lease 2 times each: no two holds overlap."""
    url, barrier = str(tmp_path / "locks" / "lease.json"), tmp_path / "barrier"
    barrier.mkdir()
    logs = [tmp_path / f"racer{i}.log" for i in range(3)]
    procs = [lease_racer(url, log, rounds=2, barrier=barrier, n=len(logs), exclusive=MODES[mode])
             for log in logs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    holds = lease_holds(logs)
    assert len(holds) == 6
    assert _objects(tmp_path / "locks") == []  # every holder released: nothing left behind


@pytest.mark.parametrize("mode", list(MODES))
def test_a_killed_holders_lease_is_taken_over_after_its_expiry_and_not_before(tmp_path: Path, mode: str) -> None:
    """The holder dies with SIGKILL (ttl 2 s); 3 waiting processes then race for the expired lease: the first hold
    starts at the expiry, and they still hold it one at a time."""
    url = str(tmp_path / "locks" / "lease.json")
    dead = lease_racer(url, tmp_path / "dead.log", exclusive=MODES[mode], ttl_s=2.0, stage="die")
    out, err = dead.communicate(timeout=60)
    assert dead.returncode == -9, err[-2000:]
    expires = json.loads(out)["expires"]
    with pytest.raises(LeaseHeld, match=f"pid {dead.pid}"):  # before its expiry it is still held
        _lease(url, "early", mode=mode).acquire()
    logs = [tmp_path / f"racer{i}.log" for i in range(3)]
    procs = [lease_racer(url, log, exclusive=MODES[mode]) for log in logs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert lease_holds([tmp_path / "dead.log"])[0][1] == float("inf")  # entered, never left
    holds = lease_holds(logs)
    assert len(holds) == 3 and expires <= holds[0][0] < expires + 20.0  # + their start-up, on a busy machine


def test_renew_extends_the_expiry_and_fails_once_the_lease_is_lost(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    a = _lease(url, "a", ttl_s=1.0).acquire()
    first = a.expires
    assert a.renew(ttl_s=3.0) > first + 1.5
    assert json.loads((tmp_path / "lease.0000000001.json").read_text())["expires"] == a.expires
    time.sleep(max(first - time.time(), 0) + 0.2)  # past the first expiry: the renewed lease still holds
    with pytest.raises(LeaseHeld, match="'a'"):
        _lease(url, "b").acquire()
    a.renew(ttl_s=0.3)
    time.sleep(0.4)
    b = _lease(url, "b").acquire()  # a's lease lapsed: b takes it over with the next generation
    assert b.held and not a.held and _objects(tmp_path) == ["lease.0000000002.json"]
    with pytest.raises(LeaseLost, match="expired"):
        a.renew()
    with pytest.raises(LeaseLost, match="not held"):
        a.renew()


def test_renew_detects_a_takeover_of_its_object(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    a = _lease(url, "a").acquire()
    obj = tmp_path / "lease.0000000001.json"
    obj.write_text(json.dumps({**json.loads(obj.read_text()), "owner": "intruder", "nonce": "other"}))
    with pytest.raises(LeaseLost, match="intruder"):
        a.renew()
    a.release()  # no longer a's: left alone
    assert json.loads(obj.read_text())["owner"] == "intruder"


def test_release_by_a_non_holder_does_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    holder = _lease(url, "same-owner").acquire()
    other = _lease(url, "same-owner")  # the same owner name, but it never acquired the lease
    other.release()
    assert _objects(tmp_path) == ["lease.0000000001.json"] and holder.held
    holder.renew()
    holder.release()
    holder.release()  # a second release is a no-op too
    assert _objects(tmp_path) == []


def test_a_holder_whose_lease_expired_leaves_the_next_holders_object_alone(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    late = _lease(url, "late", ttl_s=0.3).acquire()
    time.sleep(0.4)
    with _lease(url, "next", wait_s=5.0) as nxt:
        late.release()
        assert nxt.held and _objects(tmp_path) == ["lease.0000000002.json"]
    assert _objects(tmp_path) == []


def test_wait_s_0_on_a_held_lease_fails_at_once_naming_the_lease_its_holder_and_expiry(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    with _lease(url, "retrain on host-a", ttl_s=60.0) as held:
        start = time.monotonic()
        with pytest.raises(LeaseHeld) as e:
            _lease(url, "second").acquire()
        assert time.monotonic() - start < 1.0
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(held.expires))
        msg = str(e.value)
        assert url in msg and "'retrain on host-a'" in msg and f"pid {os.getpid()}" in msg and expiry in msg
        assert "did not wait" in msg and e.value.holder["owner"] == "retrain on host-a"
        start = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"waited 0\.5 s"):
            _lease(url, "patient", wait_s=0.5).acquire()
        assert 0.5 <= time.monotonic() - start < 2.0


def test_a_stale_racer_that_creates_an_old_generation_backs_off(tmp_path: Path) -> None:
    """A racer that listed long ago creates a generation number below the live holder's (one a clean-up freed):
    its check after creating sees the holder, and it deletes its object and reports the holder."""
    url = str(tmp_path / "lease.json")
    (tmp_path / "lease.0000000001.json").write_text(json.dumps({"owner": "dead", "expires": time.time() - 10}))
    holder = _lease(url, "holder").acquire()
    assert _objects(tmp_path) == ["lease.0000000002.json"]  # took the expired lease over; the old object is gone
    stale = _lease(url, "stale")
    real, calls = stale._generations, []

    def stale_first_listing() -> dict[int, str]:  # its first listing: from before any generation existed
        calls.append(1)
        return {} if len(calls) == 1 else real()

    stale._generations = stale_first_listing
    with pytest.raises(LeaseHeld, match="'holder'"):
        stale.acquire()
    assert not stale.held and holder.held and _objects(tmp_path) == ["lease.0000000002.json"]
    holder.release()


def test_the_lease_is_released_when_its_block_raises(tmp_path: Path) -> None:
    url = str(tmp_path / "lease.json")
    with pytest.raises(RuntimeError, match="boom"), _lease(url, "a", mode="settle"):
        raise RuntimeError("boom")
    assert _objects(tmp_path) == []
    with pytest.raises(ValueError, match="ttl_s"):
        _lease(url, "a", ttl_s=0)
