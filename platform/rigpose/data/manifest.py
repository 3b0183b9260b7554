"""A dataset's manifest.json: what a dataset holds, and the commit point every reader trusts.

Layout of a dataset root, on any fsspec URL (../DESIGN.md):

    <root>/_manifests/v0000000007.json                      committed manifest versions: the commit points
    <root>/manifest.json                                    a copy of the latest version, for plain tools
    <root>/rigs/<rig_id>.json                               the rig files used
    <root>/rig_id=<rig_id>/split=<split>/part-NNNNN-<token>.parquet
    <root>/_quarantine/<ingest token>.parquet               rejected rows with a `reason` column

Commits are versioned the Delta Lake / Iceberg way: version N+1 is a new file that a writer creates only if no
other writer created it first (`rigpose.data.commit`); readers follow the highest version. `manifest.json` is
refreshed after each commit, and is read only for a dataset without `_manifests/` (written by rigpose <= 0.1.0
or by hand). Readers trust only what the latest version lists: a crashed or aborted writer leaves files that no
reader sees, which the next commit or `rigpose datasets vacuum` removes.
Shard paths in a manifest are relative, never absolute, never with `..`. A shard that `rigpose datasets reshard`
(`rigpose.data.reshard`) wrote lists in `sources` the shards, as ingests first wrote them, that it holds rows of
(path -> rows), so that what is new since a training manifest is still told by shard (`rigpose.retrain.detect`).
Credentials for `s3://` come only from the environment (s3fs / botocore's usual variables).
Writing is `rigpose.data.writer`, reading the shards `rigpose.data.reader`.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from rigpose.data.schema import SCHEMA_VERSION
from rigpose.storage import protocol_url, url_to_fs

MANIFEST = "manifest.json"
VERSIONS = "_manifests"
_VERSION_FILE = re.compile(r"^v(\d{10})\.json$")


class DatasetError(ValueError):
    """A dataset on storage is missing, malformed, corrupt, or an ingest was refused."""


@dataclass
class ShardInfo:
    """One committed shard. `path` is relative to the dataset root.

    `sources`: lineage of a shard that `rigpose datasets reshard` wrote, the shards as an ingest first wrote them
    (flattened through earlier reshards: never a resharded shard) -> how many of their rows this shard holds; they
    sum to `rows`. Empty (and left out of the JSON) for a shard as an ingest wrote it: its own source.
    """

    path: str
    rig_id: str
    split: str
    rows: int
    bytes: int
    sha256: str
    sequences: list[str]
    sources: dict[str, int] = field(default_factory=dict)

    def origins(self) -> dict[str, int]:
        """The shards as first written whose rows this shard holds -> rows of each: `sources`, or itself."""
        return dict(self.sources) if self.sources else {self.path: self.rows}

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON object of this shard; `sources` only when there are any (older readers and the
        manifests they wrote stay byte-identical)."""
        d = asdict(self)
        if not self.sources:
            del d["sources"]
        return d


@dataclass
class Manifest:
    """manifest.json: what a dataset holds. Splits and sequences are derived from the shards."""

    skeleton: str
    joint_names: list[str]
    rigs: dict[str, dict[str, Any]]
    shards: list[ShardInfo]
    created: str
    updated: str
    history: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    version: int = 0  # the commit's number: 1 for the first (0 = a manifest.json without _manifests/)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def max_views(self) -> int:
        return max((int(r["num_cameras"]) for r in self.rigs.values()), default=0)

    def splits(self) -> dict[str, dict[str, Any]]:
        """split -> {"rows", "shards", "rigs" (sorted ids), "sequences" (count)}; a fresh copy of `_splits`."""
        return {k: {**v, "rigs": list(v["rigs"])} for k, v in self._splits.items()}

    @cached_property
    def _splits(self) -> dict[str, dict[str, Any]]:
        """`splits`, computed once: a manifest's shards do not change after it is built (a commit builds a new
        one), and readers ask for the splits on every `Dataset.shards` call (a pass over every shard's sequences)."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.shards:
            d = out.setdefault(s.split, {"rows": 0, "shards": 0, "rigs": set(), "sequences": set()})
            d["rows"] += s.rows
            d["shards"] += 1
            d["rigs"].add(s.rig_id)
            d["sequences"].update(s.sequences)
        return {k: {**v, "rigs": sorted(v["rigs"]), "sequences": len(v["sequences"])} for k, v in out.items()}

    def sequences(self) -> dict[tuple[str, str], str]:
        """(rig_id, sequence) -> split."""
        return {(s.rig_id, q): s.split for s in self.shards for q in s.sequences}

    def to_json(self) -> str:
        d = asdict(self)
        d["shards"] = [s.to_dict() for s in self.shards]
        d["splits"] = self.splits()
        d["num_rows"] = self.num_rows
        return json.dumps(d, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{source}: not valid JSON ({e})") from None
        try:
            version = int(d["schema_version"])
            if version != SCHEMA_VERSION:
                raise DatasetError(f"{source}: schema_version {version}, this rigpose reads {SCHEMA_VERSION}")
            shards = [ShardInfo(**s) for s in d["shards"]]
            m = cls(skeleton=d["skeleton"], joint_names=list(d["joint_names"]), rigs=dict(d["rigs"]),
                    shards=shards, created=d["created"], updated=d["updated"], history=list(d.get("history", [])),
                    schema_version=version, version=int(d.get("version", 0)))
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
        for s in m.shards:
            _check_relative(s.path, source=source, what="shard path")
            _check_sources(s, source=source)
        for rig_id, r in m.rigs.items():
            _check_relative(r["path"], source=source, what=f"rig {rig_id!r} path")
        return m


def _check_relative(path: str, *, source: str, what: str) -> None:
    if path.startswith("/") or "://" in path or ".." in path.split("/") or path.startswith("\\"):
        raise DatasetError(f"{source}: {what} {path!r} is absolute or climbs out of the dataset root; refused")


def _check_sources(shard: ShardInfo, *, source: str) -> None:
    """A shard's lineage: relative paths -> positive row counts that sum to its rows."""
    if not isinstance(shard.sources, dict):
        raise DatasetError(f"{source}: shard {shard.path!r}: sources must be an object of path -> rows, got "
                           f"{type(shard.sources).__name__}")
    for path, rows in shard.sources.items():
        _check_relative(path, source=source, what=f"source of shard {shard.path!r}")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise DatasetError(f"{source}: shard {shard.path!r}: source {path!r} has rows {rows!r}, expected an "
                               "integer >= 1")
    if shard.sources and sum(shard.sources.values()) != shard.rows:
        raise DatasetError(f"{source}: shard {shard.path!r}: its sources hold {sum(shard.sources.values())} rows, "
                           f"the shard {shard.rows}")


def version_file(path: str, version: int) -> str:
    """The file of manifest version `version` under the dataset folder `path`."""
    return posixpath.join(path, VERSIONS, f"v{version:010d}.json")


def latest_version(fs: Any, path: str) -> int | None:
    """The highest committed manifest version under the dataset folder `path`; None without `_manifests/`."""
    folder = posixpath.join(path, VERSIONS)
    fs.invalidate_cache(folder)  # object stores: list anew, never from s3fs's listing cache
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return None
    versions = [int(m[1]) for n in names if (m := _VERSION_FILE.match(posixpath.basename(n)))]
    return max(versions, default=None)


def _current_file(fs: Any, path: str) -> tuple[str, int | None]:
    n = latest_version(fs, path)
    return (version_file(path, n) if n is not None else posixpath.join(path, MANIFEST)), n


def manifest_path(root: str) -> str | None:
    """The file readers read for the dataset at `root`: its latest version, else manifest.json; None if neither."""
    fs, path = url_to_fs(root)
    mpath, n = _current_file(fs, path)
    return protocol_url(fs, mpath) if n is not None or fs.exists(mpath) else None


def read_manifest(root: str, version: int | None = None) -> Manifest | None:
    """The latest committed manifest of the dataset at `root` (or its version `version`), or None if there is none
    (not a dataset yet). DatasetError for a version that does not exist (or was vacuumed)."""
    fs, path = url_to_fs(root)
    if version is not None:
        mpath, n = version_file(path, version), version
        if not fs.exists(mpath):
            raise DatasetError(f"{root}: no manifest version {version} (latest: {latest_version(fs, path)}; "
                               "`rigpose datasets vacuum --keep-versions` removes old ones)")
    else:
        mpath, n = _current_file(fs, path)
    try:
        with fs.open(mpath, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        return None
    m = Manifest.from_json(text, source=protocol_url(fs, mpath))
    if n is not None and m.version != n:
        raise DatasetError(f"{protocol_url(fs, mpath)}: says version {m.version}; its file name says {n}")
    return m
