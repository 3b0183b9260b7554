"""Storage helpers shared by every part that writes files: fsspec URLs, all-at-once (atomic) and create-if-absent
(exclusive) writes, and a lease with an expiry (`Lease`: one holder at a time, on local disk and S3)."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import random
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def url_to_fs(url: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a local path, file:// or s3:// URL (s3 endpoint/credentials from the environment)."""
    fs, path = fsspec.core.url_to_fs(os.fspath(url))
    return fs, path.rstrip("/") or "/"


def protocol_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL for `path` on `fs` that Ray Data / pyarrow accept (s3://bucket/key, or a plain local path)."""
    if isinstance(fs, LocalFileSystem):
        return path
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return f"{proto}://{path}"


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make `path` hold `data` all at once: a reader sees the old file or the new one, never a part.

    Locally: a temp file in the same folder, fsync, rename. Object stores publish an object only when its single
    PUT completes, so there it is one `pipe_file`.
    """
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    with _synced_temp(path, data) as tmp:
        os.replace(tmp, path)


@contextlib.contextmanager
def _synced_temp(path: str, data: bytes) -> Iterator[str]:
    """A temp file beside `path` holding `data`, on disk (fsync), world-readable; removed after the block unless
    the block moved it into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create `path` holding `data` all at once, only if nothing is there yet. False when a file already is
    (another writer got there first); then nothing is changed.

    Locally: a temp file in the same folder, fsync, then `os.link` onto the name, which the kernel refuses when the
    name exists (atomic, also on NFS). Object stores: a conditional PUT (`If-None-Match: *`, s3fs's
    `mode="create"`); check `exclusive_writes_work` first, since some S3-compatible endpoints ignore the header.
    """
    if not isinstance(fs, LocalFileSystem):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    with _synced_temp(path, data) as tmp:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True


_EXCLUSIVE_WORKS: dict[tuple[str, str], bool] = {}


def exclusive_writes_work(fs: fsspec.AbstractFileSystem, folder: str) -> bool:
    """Whether `write_bytes_exclusive` really refuses an existing name under `folder` (tried once per bucket and
    process with a probe object, then removed). Always True on local disk."""
    if isinstance(fs, LocalFileSystem):
        return True
    key = (str(fs.protocol), folder.split("/", 1)[0])
    if key not in _EXCLUSIVE_WORKS:
        probe = f"{folder}/_probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            first = write_bytes_exclusive(fs, probe, b"1")
            try:
                second = write_bytes_exclusive(fs, probe, b"2")
            except OSError:  # an endpoint that rejects the header outright
                second = True
            _EXCLUSIVE_WORKS[key] = first and not second
        except OSError:
            _EXCLUSIVE_WORKS[key] = False
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                fs.rm_file(probe)
    return _EXCLUSIVE_WORKS[key]


# ------------------------------------------------------------------------------------------------------- leases
#: default seconds a lease writer waits, where conditional writes do not work, before reading its write back
LEASE_SETTLE_S = 1.0


class LeaseError(RuntimeError):
    """A lease could not be taken or kept."""


class LeaseHeld(LeaseError):  # noqa: N818 - names the state a caller tests for ("busy: skip"), as LeaseLost
    """Another holder has the lease and kept it for as long as `acquire` was told to wait. `holder`: its object."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(LeaseError):  # noqa: N818 - see LeaseHeld
    """`renew` on a lease this process no longer holds: it expired first, or another process took it over."""


class Lease:
    """A lease on a storage path that at most one process at a time holds, with an expiry, on local disk and S3.

    `Lease(fs, path, owner=..., ttl_s=..., wait_s=...)`; `with lease:` (or `acquire()` ... `release()`), `renew()`
    while working. The lease object holds JSON {owner, host, pid, acquired, expires, nonce, generation}; `expires`
    is wall-clock time (epoch seconds) written by the holder, so a holder that dies (SIGKILL, a lost node) stops
    blocking others `ttl_s` after its last renewal, with nothing to clean up by hand.

    The objects are generations beside `path`: `<folder>/<stem>.<generation, 10 digits><suffix>`, e.g.
    `_retrain/lease.0000000003.json` for `_retrain/lease.json`. To acquire:
    1. list the generations and read them; one that is live (not expired) and not ours: held (wait, or fail);
    2. else create generation max+1, if absent: create-if-absent (`write_bytes_exclusive`) where
       `exclusive_writes_work`, else write it, wait `settle_s` and read it back (the last writer has it);
       losing that creation means another racer has the lease: step 1 again;
    3. list again: when a live generation other than ours is there, delete ours and start again; else ours is the
       lease, and generations that are not live (expired holders) are deleted.
    Taking over an expired lease is creating the next generation, never changing the expired object, so of several
    racers that saw it expired only the creator of max+1 can win. Step 3 covers a racer that listed long ago and
    creates a stale number (below the max, or one a release freed): it sees the live holder and backs off.
    Why at most one holds: each racer creates its object before it checks (step 3), so of two racers the one that
    checks second checks after the other's creation: it sees the other's live object and backs off (both may back
    off, rarely: then both try again, or fail with wait_s=0). In the settle protocol the expiry counts from the
    write, so `acquire` returns with `ttl_s - settle_s` left.
    `renew` rewrites our generation with a later expiry; `release` deletes it; both only while our object still
    names us and our expiry has not passed by our clock (after it, another may hold the lease: we touch nothing).

    Guarantees, given a strongly consistent listing after a write (local disk, AWS S3, MinIO) and host clocks
    that agree to well within `ttl_s`: with conditional writes, at most one holder at any moment among holders that
    renew before their expiry. Not guaranteed: (a) a holder that stalls past its expiry (a suspended VM, a long
    GC) and then acts without calling `renew` overlaps with the next holder: storage cannot fence it, so call
    `renew` (it raises LeaseLost) before an action that must be exclusive; (b) without conditional writes (the
    settle protocol), a racer whose write lands more than `settle_s` after it found the generation absent can
    overwrite the winner's object: both then believe they hold it until the winner's next `renew`/`release` sees a
    foreign object; (c) every process sharing a lease must use the same protocol (`exclusive`).

    `exclusive`: None asks `exclusive_writes_work`; False forces the settle protocol (endpoints that claim
    conditional writes wrongly). `wait_s`: how long `acquire` waits for a held lease (0: try once).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, owner: str, ttl_s: float, wait_s: float = 0.0,
                 exclusive: bool | None = None, settle_s: float = LEASE_SETTLE_S) -> None:
        if ttl_s <= 0 or wait_s < 0 or settle_s < 0:
            raise ValueError(f"lease {path}: ttl_s must be > 0, wait_s and settle_s >= 0; got ttl_s={ttl_s}, "
                             f"wait_s={wait_s}, settle_s={settle_s}")
        self.fs, self.path, self.owner = fs, path, owner
        self.ttl_s, self.wait_s, self.settle_s = float(ttl_s), float(wait_s), float(settle_s)
        self.exclusive = exclusive_writes_work(fs, posixpath.dirname(path)) if exclusive is None else exclusive
        self.url = protocol_url(fs, path)
        self.folder = posixpath.dirname(path)
        stem, suffix = posixpath.splitext(posixpath.basename(path))
        self._stem, self._suffix = stem, suffix
        self._name = re.compile(rf"^{re.escape(stem)}\.(\d{{10}}){re.escape(suffix)}$")
        self._nonce = os.urandom(8).hex()  # tells this Lease from another with the same owner
        self._generation: int | None = None
        self._acquired = 0.0
        self.expires: float | None = None  # ours, while held

    @property
    def held(self) -> bool:
        """Whether this object holds the lease (acquired, not released or lost, not expired by our clock)."""
        return self._generation is not None and self.expires is not None and time.time() < self.expires

    def acquire(self, wait_s: float | None = None) -> Lease:
        """Take the lease, waiting up to `wait_s` (default: the constructor's) while another holds it; LeaseHeld
        (naming the lease, its holder and its expiry) when it stays held."""
        if self.held:
            return self
        wait_s = self.wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while True:
            holder = self._attempt()
            if holder is None:
                return self
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(self._held_message(holder, wait_s), holder)
            time.sleep(min(random.uniform(0.05, 0.3), left))

    def renew(self, ttl_s: float | None = None) -> float:
        """Extend our expiry to now + `ttl_s` (default: the constructor's); returns it. LeaseLost when this process
        no longer holds the lease (never acquired, released, expired, or taken over)."""
        if self._generation is None or self.expires is None:
            raise LeaseLost(f"lease {self.url}: not held by this process ({self.owner!r})")
        now, mine = time.time(), self._generation_path(self._generation)
        if now >= self.expires:
            self._forget()
            raise LeaseLost(f"lease {self.url}: expired at {_utc(self.expires)} before this renewal; another "
                            "process may hold it now")
        body = self._read(mine)
        if body is None or body.get("nonce") != self._nonce:
            self._forget()
            raise LeaseLost(f"lease {self.url}: taken over by {_who(body)}")
        expires = now + (self.ttl_s if ttl_s is None else float(ttl_s))
        write_bytes_atomic(self.fs, mine, self._body(expires))
        self.expires = expires
        if other := self._live_other():  # a takeover that slipped in (clocks apart, or a settle-protocol race)
            self._forget()
            raise LeaseLost(f"lease {self.url}: taken over by {_who(other)}")
        return expires

    def release(self) -> None:
        """Give the lease up: delete our object if it still is ours and our expiry has not passed. Does nothing when
        this object does not hold the lease."""
        generation, expires = self._generation, self.expires
        self._forget()
        if generation is None or expires is None or time.time() >= expires:
            return  # never held, already released, or expired: the object may be another's now
        mine = self._generation_path(generation)
        body = self._read(mine)
        if body is not None and body.get("nonce") == self._nonce:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(mine)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _attempt(self) -> dict[str, Any] | None:
        """One round of the protocol (class docstring): None when we hold the lease now, else the holder's object
        ({} when it vanished while being read)."""
        generations = self._generations()
        now = time.time()
        bodies = {g: self._read(p) for g, p in generations.items()}
        live = [b for b in bodies.values() if _live(b, now)]
        if live:
            return max(live, key=lambda b: float(b["expires"]))
        generation = max(generations, default=0) + 1
        path = self._generation_path(generation)
        self._acquired = now
        expires = now + self.ttl_s
        if not self._create(path, self._body(expires, generation)):
            return self._read(path) or {}
        self._generation, self.expires = generation, expires
        if other := self._live_other():
            self._forget()
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)
            return other
        for p in generations.values():  # expired holders' objects (all were, when listed; ours is max+1)
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(p)
        return None

    def _create(self, path: str, data: bytes) -> bool:
        """Create `path` if absent: conditionally, or (settle protocol) write, wait and read back."""
        if self.exclusive:
            return write_bytes_exclusive(self.fs, path, data)
        self.fs.invalidate_cache(self.folder)
        if self.fs.exists(path):
            return False
        write_bytes_atomic(self.fs, path, data)
        time.sleep(self.settle_s)
        return (self._read(path) or {}).get("nonce") == self._nonce

    def _live_other(self) -> dict[str, Any] | None:
        """A live lease object other than ours, if one is there."""
        now = time.time()
        for g, p in self._generations().items():
            if g != self._generation and _live(body := self._read(p), now):
                return body
        return None

    def _generations(self) -> dict[int, str]:
        self.fs.invalidate_cache(self.folder)  # object stores: list anew, never from s3fs's listing cache
        try:
            names = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return {}
        return {int(m[1]): n for n in names if (m := self._name.match(posixpath.basename(n)))}

    def _generation_path(self, generation: int) -> str:
        return posixpath.join(self.folder, f"{self._stem}.{generation:010d}{self._suffix}")

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            body = json.loads(self.fs.cat_file(path))
        except (FileNotFoundError, ValueError):  # gone meanwhile, or not a lease object
            return None
        return body if isinstance(body, dict) else None

    def _body(self, expires: float, generation: int | None = None) -> bytes:
        return json.dumps({"owner": self.owner, "host": os.uname().nodename, "pid": os.getpid(),
                           "acquired": self._acquired, "expires": expires, "nonce": self._nonce,
                           "generation": generation if generation is not None else self._generation}).encode()

    def _forget(self) -> None:
        self._generation = self.expires = None

    def _held_message(self, holder: dict[str, Any], wait_s: float) -> str:
        waited = f"waited {wait_s:g} s" if wait_s > 0 else "did not wait"
        if not holder:
            return f"the lease {self.url} is held by another process (its object vanished while read); {waited}"
        expires = float(holder.get("expires", 0))
        gen = holder.get("generation")
        obj = protocol_url(self.fs, self._generation_path(int(gen))) if isinstance(gen, int) else self.url
        return (f"the lease {self.url} is held by {_who(holder)} since {_utc(float(holder.get('acquired', 0)))} "
                f"until {_utc(expires)} ({max(expires - time.time(), 0):.0f} s from now; object {obj}); {waited}")


def _live(body: dict[str, Any] | None, now: float) -> bool:
    try:
        return body is not None and float(body.get("expires", 0)) > now
    except (TypeError, ValueError):
        return False


def _who(body: dict[str, Any] | None) -> str:
    if not body:
        return "another process"
    return f"{body.get('owner')!r} (host {body.get('host')}, pid {body.get('pid')})"


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


@contextlib.contextmanager
def published_parquet(out_url: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A ParquetWriter on a temp file that becomes `out_url` only when the block finishes without error."""
    fs, path = url_to_fs(out_url)
    if fs.isdir(path):
        raise ValueError(f"out: {out_url} is a directory; give a file name such as {out_url.rstrip('/')}/lift.parquet")
    local = isinstance(fs, LocalFileSystem)
    folder = Path(path).parent if local else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            yield writer
        if local:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path)  # one (multipart) upload: the object appears only when it completes
    finally:
        Path(tmp).unlink(missing_ok=True)
