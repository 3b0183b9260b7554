"""Storage helpers shared by every part that writes files: fsspec URLs, all-at-once (atomic) and create-if-absent
(exclusive) writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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


def modified_age_s(fs: fsspec.AbstractFileSystem, path: str, now: float | None = None) -> float:
    """Seconds since `path` was last written (its mtime, or an object's LastModified)."""
    stamp = fs.modified(path)
    return (time.time() if now is None else now) - stamp.timestamp()


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
