"""Datasets on a real S3 endpoint (moto's server on 127.0.0.1): write, commit, read back, validate, describe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rigpose.data.manifest import DatasetError, read_manifest
from rigpose.data.reader import Dataset
from rigpose.data.schema import frames_for_rig
from rigpose.data.validate import describe_dataset, validate_dataset
from rigpose.data.writer import DatasetWriter
from rigpose.geometry import project
from rigpose.resources import recipes_dir, rigs_dir
from rigpose.rig import load_rig
from rigpose.skeleton import H36M17

pytestmark = pytest.mark.integration


def _frames(rig, seq: str, T: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.3, (T, 17, 3)) + [0.0, 0.0, 1.0]
    pix = np.stack([project(X, c) for c in rig.cameras], 1)
    return frames_for_rig(rig, sequence=seq, keypoints=pix, joints_3d=X)


def test_dataset_round_trips_through_s3_and_validates(s3_bucket: str) -> None:
    rig = load_rig(rigs_dir() / "h36m-s1.json")
    root = f"{s3_bucket}/datasets/demo"
    with DatasetWriter(root, skeleton=H36M17, command="test", shard_rows=16) as w:
        w.add(_frames(rig, "a"), rig, split="train")
        w.add(_frames(rig, "b", seed=1), rig, split="test")
        w.commit()
    ds = Dataset(root)
    assert ds.manifest.num_rows == 60 and len(ds.manifest.shards) == 4
    assert all(u.startswith("s3://rigpose-test/datasets/demo/rig_id=h36m-s1/") for u in ds.shard_urls())
    frames = ds.read_frames(splits="train")
    np.testing.assert_array_equal(frames.keypoints, _frames(rig, "a").keypoints)
    report = validate_dataset(root)
    assert report.ok, report.problems
    d = describe_dataset(root)
    assert max(d["rigs"]["h36m-s1"]["reprojection_px_median_per_camera"]) < 1e-3


def test_an_aborted_write_to_s3_leaves_no_dataset(s3_bucket: str) -> None:
    rig = load_rig(rigs_dir() / "h36m-s1.json")
    root = f"{s3_bucket}/datasets/broken"
    with pytest.raises(RuntimeError), DatasetWriter(root, skeleton=H36M17, command="test", shard_rows=8) as w:
        w.add(_frames(rig, "a"), rig, split="train")
        raise RuntimeError("writer crashed")
    assert read_manifest(root) is None
    with pytest.raises(DatasetError, match=r"no manifest\.json"):
        Dataset(root)


def test_cli_build_ingest_validate_describe_on_s3(s3_bucket: str, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from rigpose.cli.main import app
    from rigpose.data.ingest import write_interchange_npz

    runner = CliRunner()
    built = f"{s3_bucket}/built"
    r = runner.invoke(app, ["datasets", "build", str(recipes_dir() / "tiny.yaml"), "--out", built,
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    rig = load_rig(rigs_dir() / "h36m-s1.json")
    f = _frames(rig, "take1", T=40)
    write_interchange_npz(str(tmp_path / "take1.npz"), keypoints=f.keypoints, joint_names=H36M17.joint_names,
                          camera_names=rig.camera_names, joints_3d=f.joints_3d)
    ingested = f"{s3_bucket}/ingested"
    r = runner.invoke(app, ["datasets", "ingest", "npz", str(tmp_path / "take1.npz"), "--rig",
                            str(rigs_dir() / "h36m-s1.json"), "--out", ingested, "--split", "train",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    for url, rows in ((built, 400), (ingested, 40)):
        r = runner.invoke(app, ["datasets", "validate", url])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["datasets", "describe", url, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["rows"] == rows


def test_cli_h36m_and_coco_ingest_write_to_s3(s3_bucket: str, tmp_path: Path) -> None:
    """The VideoPose3D and COCO converters publish through the same writer to the S3 endpoint."""
    import json

    from typer.testing import CliRunner

    from rigpose.cli.main import app
    from rigpose.skeleton import COCO17

    runner = CliRunner()
    rigs = rigs_dir()
    pos2d = {}
    for subject in ("S1", "S9"):
        rig = load_rig(rigs / f"h36m-{subject.lower()}.json")
        kp = _frames(rig, "walk", T=20).keypoints  # [T, V, 17, 2]
        pos2d[subject] = {"Walking": [kp[:, v] for v in range(4)]}
    np.savez_compressed(tmp_path / "data_2d_h36m_gt.npz", positions_2d=pos2d,
                        metadata={"layout_name": "h36m", "num_joints": 17})
    h36m = f"{s3_bucket}/h36m"
    r = runner.invoke(app, ["datasets", "ingest", "h36m", str(tmp_path / "data_2d_h36m_gt.npz"), "--out", h36m,
                            "--rigs-dir", str(rigs), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert set(Dataset(h36m).manifest.splits()) == {"train", "test"}  # S1 train, S9 test

    rig = load_rig(rigs / "h36m-s1.json")
    kp = _frames(rig, "x", T=8).keypoints  # coco17 has 17 joints too: reuse the projected points
    files = []
    for v in range(4):
        images = [{"id": 100 + t, "file_name": f"frame_{t:04d}.jpg"} for t in range(8)]
        anns = [{"id": t, "image_id": 100 + t, "category_id": 1, "score": 0.9,
                 "keypoints": np.c_[kp[t, v], np.full(17, 2.0)].reshape(-1).tolist()} for t in range(8)]
        path = tmp_path / f"cam{v}.json"
        path.write_text(json.dumps({"images": images, "annotations": anns}))
        files.append(str(path))
    coco = f"{s3_bucket}/coco"
    r = runner.invoke(app, ["datasets", "ingest", "coco", *files, "--rig", str(rigs / "h36m-s1.json"),
                            "--sequence", "take1", "--split", "train", "--out", coco, "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = Dataset(coco)
    assert ds.manifest.skeleton == COCO17.name and ds.manifest.num_rows == 8
    assert validate_dataset(coco).ok


def _unlisted_s3(root: str) -> list[str]:
    from rigpose.storage import url_to_fs

    fs, path = url_to_fs(root)
    fs.invalidate_cache()
    listed = {s.path for s in read_manifest(root).shards}
    return sorted(r for p in fs.find(path) if (r := p[len(path) + 1:]).endswith(".parquet") and r not in listed)


@pytest.mark.parametrize("mode", ["conditional-put", "lease"])
def test_concurrent_ingests_into_s3_lose_no_row(s3_bucket: str, tmp_path: Path, mode: str) -> None:
    """N=4 writer processes commit into one s3:// dataset at the same moment (a barrier): no rig, no row lost."""
    import json

    from rigpose_testing import writer_process

    from rigpose.data.commit import LEASE_ENV

    root, barrier = f"{s3_bucket}/concurrent-{mode}", tmp_path / "barrier"
    barrier.mkdir()
    rows = {"h36m-s1": 30, "h36m-s5": 25, "humaneva-s1": 41, "studio-8": 12}
    env = {LEASE_ENV: "1"} if mode == "lease" else {}
    procs = [writer_process(root, rig, "walk", n, barrier=str(barrier), n=len(rows), env=env)
             for rig, n in rows.items()]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    m = read_manifest(root)
    assert m.version == len(rows)
    assert {r: sum(s.rows for s in m.shards if s.rig_id == r) for r in m.rigs} == rows
    assert len(Dataset(root).read_table(columns=["frame"])) == sum(rows.values())
    from rigpose.storage import url_to_fs

    fs, path = url_to_fs(root)
    assert json.loads(fs.cat_file(f"{path}/manifest.json"))["version"] == len(rows)
    assert validate_dataset(root).ok and not _unlisted_s3(root)


def test_a_writer_killed_between_shards_on_s3_leaves_the_dataset_valid_and_vacuum_collects_it(
        s3_bucket: str) -> None:
    from rigpose_testing import writer_process
    from typer.testing import CliRunner

    from rigpose.cli.main import app

    rig = load_rig(rigs_dir() / "h36m-s1.json")
    root = f"{s3_bucket}/killed"
    with DatasetWriter(root, skeleton=H36M17, command="test") as w:
        w.add(_frames(rig, "a"), rig, split="train")
        w.commit()
    p = writer_process(root, "h36m-s5", "run", 45, stage="between-shards")
    p.communicate(timeout=120)
    assert p.returncode == -9
    assert read_manifest(root).num_rows == 30 and validate_dataset(root).ok
    orphans = _unlisted_s3(root)
    assert orphans
    r = CliRunner().invoke(app, ["datasets", "vacuum", root, "--grace", "0"])
    assert r.exit_code == 0, r.output
    assert f"removed {len(orphans) + 1} file(s)" in r.output  # the shards and the writer's heartbeat
    assert not _unlisted_s3(root) and validate_dataset(root).ok


@pytest.mark.parametrize("mode", ["conditional-put", "settle"])
def test_processes_racing_for_a_lease_on_s3_hold_it_one_at_a_time_and_take_over_an_expired_one(
        s3_bucket: str, tmp_path: Path, mode: str) -> None:
    """A holder killed with SIGKILL (ttl 3 s) blocks until its expiry; then 2 processes race for the expired lease
    (2 holds each): the first hold starts at the expiry and no two overlap (rigpose.storage.Lease)."""
    import json

    from rigpose_testing import lease_holds, lease_racer

    from rigpose.storage import Lease, LeaseHeld, exclusive_writes_work, url_to_fs

    url, barrier = f"{s3_bucket}/locks/lease.json", tmp_path / "barrier"
    barrier.mkdir()
    fs, path = url_to_fs(url)
    exclusive = None if mode == "conditional-put" else False
    assert exclusive_writes_work(fs, "rigpose-test/locks")  # moto honours If-None-Match: the probe finds it
    settle_s = 1.0  # the settle protocol's margin for a write to land after the racer found the name free
    dead = lease_racer(url, tmp_path / "dead.log", exclusive=exclusive, ttl_s=3.0, stage="die", settle_s=settle_s)
    out, err = dead.communicate(timeout=60)
    assert dead.returncode == -9, err[-2000:]
    expires = json.loads(out)["expires"]
    with pytest.raises(LeaseHeld, match=f"pid {dead.pid}"):
        Lease(fs, path, owner="early", ttl_s=30.0, exclusive=exclusive).acquire()
    logs = [tmp_path / f"racer{i}.log" for i in range(2)]
    procs = [lease_racer(url, log, rounds=2, barrier=barrier, n=len(logs), exclusive=exclusive, settle_s=settle_s)
             for log in logs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    holds = lease_holds(logs)
    assert len(holds) == 4 and expires <= holds[0][0] < expires + 20.0  # + their start-up, on a busy machine
    fs.invalidate_cache()
    assert not fs.glob("rigpose-test/locks/lease*")  # released, and the dead holder's object cleaned up
