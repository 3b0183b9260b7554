"""Storage helpers shared by every part that writes files: fsspec URLs and all-at-once (atomic) writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
