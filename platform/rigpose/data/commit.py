"""Committing a dataset change safely beside other writers: numbered manifest versions, heartbeats, vacuum.

The protocol (the Delta Lake / Iceberg way), for `rigpose.data.writer.DatasetWriter`:

1. A writer reads the latest version N (`rigpose.data.manifest.read_manifest`) and writes its shards under names
   no other writer uses (`part-NNNNN-<writer token>.parquet`), keeping `_writers/<token>.json` fresh meanwhile
   (its heartbeat: the files of a writer whose heartbeat is fresh are never collected).
2. `publish` builds the new manifest on the latest version and creates `_manifests/v<N+1>.json` only if it does
   not exist yet: `os.link` on local disk, a conditional PUT (`If-None-Match: *`) on object storage, and, where an
   endpoint ignores that header, under a lease with an expiry (`rigpose.storage.Lease`, its objects
   `_manifests/_lease.<generation>.json`). Creating that file is the commit.
3. A writer that loses the race re-reads the new latest version, checks for conflicts (the same rig/sequence
   written by both: refused, naming both) and tries N+2, and so on.
4. `manifest.json` is then refreshed to a copy of the latest version, for plain tools (`jq`, a browser).

Files that no committed version lists (a failed or killed writer's shards) are invisible to readers; the next
commit, or `rigpose datasets vacuum`, removes those older than a grace period whose writer's heartbeat is stale,
and at once those of a writer that ran on this host and whose process is gone. Shards that a newer version dropped
(`rigpose datasets reshard` rewrote them) stay for the grace period after that newer version was committed: a
reader that opened the version before it (a training job pinned to it) still finds them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import posixpath
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rigpose.data.manifest import (
    MANIFEST,
    VERSIONS,
    DatasetError,
    Manifest,
    latest_version,
    read_manifest,
    version_file,
)
from rigpose.storage import (
    Lease,
    LeaseHeld,
    LeaseLost,
    exclusive_writes_work,
    url_to_fs,
    write_bytes_atomic,
    write_bytes_exclusive,
)

WRITERS = "_writers"
LEASE = "_lease.json"
#: files of failed writers are collected once this old (and their writer's heartbeat is this stale)
DEFAULT_GRACE_S = 3600.0
HEARTBEAT_S = 60.0
LEASE_TTL_S = 120.0
LEASE_WAIT_S = 600.0
MAX_ATTEMPTS = 200
#: set to 1 to commit under the lease even where conditional writes work (for endpoints that claim them wrongly)
LEASE_ENV = "RIGPOSE_COMMIT_LEASE"

_SHARD = re.compile(r"^rig_id=[^/]+/split=[^/]+/[^/]+\.parquet$")


class Heartbeat:
    """`_writers/<token>.json` of one writer, rewritten at most every HEARTBEAT_S while it writes shards."""

    def __init__(self, fs: Any, path: str, token: str, command: str) -> None:
        self.fs, self.token, self.command = fs, token, command
        self.file = posixpath.join(path, WRITERS, f"{token}.json")
        self._last = -float("inf")

    def beat(self) -> None:
        if time.monotonic() - self._last < HEARTBEAT_S:
            return
        body = {"token": self.token, "command": self.command, "pid": os.getpid(), "host": os.uname().nodename,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_bytes_atomic(self.fs, self.file, json.dumps(body).encode())
        self._last = time.monotonic()

    def end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.file)


def publish(root: str, base: Manifest | None, build: Callable[[Manifest | None], Manifest], *,
            token: str) -> tuple[Manifest, Manifest | None]:
    """Commit `build(base)` as the next manifest version; returns (the committed manifest, the base it was built on).

    When another writer committed since `base`, `build` is called again on the newer version; it raises
    DatasetError on a conflict. `token` identifies this writer in the lease.
    """
    fs, path = url_to_fs(root)
    exclusive = exclusive_writes_work(fs, path) and os.environ.get(LEASE_ENV, "") not in ("1", "true")
    for attempt in range(MAX_ATTEMPTS):
        current = latest_version(fs, path) or 0
        if current != (base.version if base is not None else 0):
            base = read_manifest(root)
        manifest = build(base)
        manifest.version = (base.version if base is not None else 0) + 1
        data = manifest.to_json().encode()
        target = version_file(path, manifest.version)
        if exclusive:
            created = write_bytes_exclusive(fs, target, data)
        else:
            created = _create_under_lease(fs, path, target, data, token=token, root=root)
        if created:
            refresh_copy(fs, path)
            return manifest, base
        time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 20))  # lost the race: re-base and retry
    raise DatasetError(f"{root}: gave up committing after {MAX_ATTEMPTS} attempts (other writers kept committing "
                       "first); nothing of this ingest is visible; run it again")


def refresh_copy(fs: Any, path: str) -> None:
    """Make manifest.json a copy of the latest version. Every committer does this after its commit and checks
    again, so the copy ends at the latest version whatever order concurrent writers finish in."""
    for _ in range(20):
        n = latest_version(fs, path)
        if n is None:
            return
        with fs.open(version_file(path, n), "rb") as f:
            data = f.read()
        write_bytes_atomic(fs, posixpath.join(path, MANIFEST), data)
        if latest_version(fs, path) == n:
            return


def _create_under_lease(fs: Any, path: str, target: str, data: bytes, *, token: str, root: str) -> bool:
    """Where conditional writes do not work: create `target` if it is absent, under the commit lease
    (`rigpose.storage.Lease`, write/settle/read-back protocol: the last writer holds it). A lease whose holder died
    lapses after LEASE_TTL_S."""
    lease = Lease(fs, posixpath.join(path, VERSIONS, LEASE), owner=token, ttl_s=LEASE_TTL_S, wait_s=LEASE_WAIT_S,
                  exclusive=False)
    try:
        lease.acquire()
    except LeaseHeld as e:
        raise DatasetError(f"{root}: gave up committing: {e}; nothing of this ingest is visible") from e
    try:
        fs.invalidate_cache(posixpath.dirname(target))
        if fs.exists(target):
            return False
        lease.renew()  # still ours right before the write (a stall past the expiry raises): no second writer
        write_bytes_atomic(fs, target, data)
        return True
    except LeaseLost:
        return False  # another writer has the lease now: re-base and try again
    finally:
        lease.release()


@dataclass
class VacuumReport:
    """What `collect_garbage` removed (or would remove, with dry_run) and what it left for running writers."""

    root: str
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    in_progress: list[str] = field(default_factory=list)  # unlisted, but a live writer's or younger than the grace
    superseded: list[str] = field(default_factory=list)  # unlisted, but a version superseded within the grace lists
    versions_pruned: int = 0
    dry_run: bool = False


def _mtime(info: dict[str, Any]) -> float:
    if "mtime" in info:
        return float(info["mtime"])
    stamp = info.get("LastModified") or info.get("last_modified")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else time.time()


def _writer_token(name: str) -> str | None:
    """The writer token in a shard name `part-00003-<token>.parquet`."""
    parts = name.removesuffix(".parquet").split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "part" else None


def _died_here(fs: Any, heartbeat: str) -> bool:
    """True when the heartbeat's writer ran on this host and its process is gone (killed, crashed): its files can
    go at once, whatever their age. A reused pid only makes this conservative."""
    try:
        with fs.open(heartbeat, "rb") as f:
            body = json.loads(f.read())
        if body.get("host") != os.uname().nodename:
            return False
        os.kill(int(body["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return False  # unreadable, another user's process (PermissionError), or a half-written heartbeat
    return False


def _version_of(rel: str) -> int | None:
    """N of a manifest version file `_manifests/v<N>.json` (relative to the root); None for any other file."""
    m = re.match(rf"^{VERSIONS}/v(\d{{10}})\.json$", rel)
    return int(m[1]) if m else None


def _recently_listed(fs: Any, path: str, files: dict[str, dict[str, Any]], *, since: float, skip: set[int],
                     latest: int) -> set[str]:
    """Shard paths of the manifest versions that were the latest until after `since` (the next version was
    committed after it; bar `latest` itself and the versions in `skip`): readers may have opened them then."""
    versions = sorted((n, rel) for rel in files if (n := _version_of(rel)) is not None)
    out: set[str] = set()
    for (n, rel), (_, successor) in itertools.pairwise(versions):
        if n == latest or n in skip or _mtime(files[successor]) < since:
            continue
        try:
            with fs.open(posixpath.join(path, rel), "rb") as f:
                m = Manifest.from_json(f.read().decode(), source=rel)
        except (FileNotFoundError, DatasetError):
            continue  # pruned meanwhile, or unreadable: it protects nothing
        out |= {s.path for s in m.shards}
    return out


def collect_garbage(root: str, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
                    keep_versions: int | None = None) -> VacuumReport:
    """Remove what no committed version lists and no running writer owns: shards, rig files and temp files older
    than `grace_s` whose writer's heartbeat is older too (at once when that writer ran on this host and its process
    is gone), and stale heartbeats. Shards that an older version lists stay until `grace_s` after the version that
    followed it was committed (its readers may still read them). `keep_versions`: also delete all but the newest
    that many manifest versions (None keeps every version; a pruned version protects no shard). Quarantine files are
    kept (they are the reasons rows were refused). With `grace_s=0`, only while no ingest runs."""
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    if keep_versions is not None and keep_versions < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
    fs, path = url_to_fs(root)
    now = time.time()
    fs.invalidate_cache(path)
    # the files first, then the manifest: a writer that commits in between has its files listed by that manifest;
    # the other way round, its rig file could be seen unlisted after its heartbeat had ended, and be removed
    files = {posixpath.relpath(p, path): info for p, info in fs.find(path, detail=True).items()}
    manifest = read_manifest(root)
    if manifest is None:
        raise DatasetError(f"{root}: no manifest; not a RigPose dataset, nothing to vacuum")
    listed = {s.path for s in manifest.shards} | {r["path"] for r in manifest.rigs.values()}
    beats = {rel.removeprefix(f"{WRITERS}/").removesuffix(".json"): rel for rel in files
             if rel.startswith(f"{WRITERS}/") and rel.endswith(".json")}
    dead = {token for token, rel in beats.items() if _died_here(fs, posixpath.join(path, rel))}
    live = {token for token, rel in beats.items() if token not in dead and now - _mtime(files[rel]) < grace_s}
    report = VacuumReport(root=root, dry_run=dry_run)
    doomed: list[str] = []
    for rel, info in sorted(files.items()):
        name = posixpath.basename(rel)
        old = now - _mtime(info) >= grace_s
        temp = name.startswith(".") and name.endswith(".tmp")
        if _SHARD.match(rel) or (rel.startswith("rigs/") and rel.endswith(".json")) or temp:
            if rel in listed:
                continue
            owner = _writer_token(name)
            # a writer's own shards: kept while it may run; rig and temp files (no owner): while any writer may
            keep = (owner not in dead and (not old or owner in live)) if owner else (not old and bool(live))
            if keep:
                report.in_progress.append(rel)
                continue
        elif rel.startswith(f"{WRITERS}/"):
            if not old and rel.removeprefix(f"{WRITERS}/").removesuffix(".json") not in dead:
                continue
        else:
            continue
        doomed.append(rel)
    newest = latest_version(fs, path) or 0
    pruned = {n: rel for rel in sorted(files) if (n := _version_of(rel)) is not None
              and keep_versions is not None and n <= newest - keep_versions}
    if grace_s > 0 and any(_SHARD.match(rel) for rel in doomed):
        recent = _recently_listed(fs, path, files, since=now - grace_s, skip=set(pruned), latest=manifest.version)
        report.superseded = [rel for rel in doomed if rel in recent]
        doomed = [rel for rel in doomed if rel not in recent]
    report.bytes_freed = sum(int(files[rel].get("size") or 0) for rel in doomed)
    doomed += pruned.values()
    report.versions_pruned = len(pruned)
    # shards before heartbeats: a vacuum stopped half-way never leaves a writer's shards without its heartbeat
    doomed.sort(key=lambda rel: rel.startswith(f"{WRITERS}/"))
    for rel in doomed:
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(posixpath.join(path, rel))
        report.removed.append(rel)
    return report
