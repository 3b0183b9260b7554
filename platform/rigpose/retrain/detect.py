"""What is new in a dataset since a model was trained: per rig, the shards and rows the current manifest lists that
the model's training manifest did not (and those it dropped), from the two manifests alone.

Shards are compared as ingests first wrote them ("original" shards): a shard that `rigpose datasets reshard` wrote
stands for the original shards it names in `sources` (path -> rows it holds of each), and any other shard for
itself. Original shard paths carry their writer's token, so an append shows as added shards, a `--replace` as
removed + added ones, a new `rig_id=` partition as a new rig, and a reshard as nothing at all: against a baseline
from before it, only the rows of original shards the baseline did not list are new (a reshard that merged new and
old shards counts just the new ones' rows). The training manifest of a registered version is its run's
`dataset/manifest.json` artifact (`rigpose.train.publish`); one from before lineage (no `sources`) compares as it
did, each shard its own original.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpose.data.manifest import Manifest

#: the artifact of a training run that holds the manifest it trained on (rigpose.train.publish)
TRAINING_MANIFEST = "dataset/manifest.json"


@dataclass(frozen=True)
class RigChange:
    """One rig's difference between the baseline manifest and the current one, in original shards (as ingests wrote
    them, seen through reshards) and their rows."""

    rig_id: str
    new_rig: bool  # the baseline had no shard of this rig
    shards_added: int
    rows_added: int
    shards_removed: int
    rows_removed: int
    splits: tuple[str, ...]  # splits of the added shards

    @property
    def changed(self) -> bool:
        return bool(self.shards_added or self.shards_removed)


def diff_manifests(baseline: Manifest | None, current: Manifest, *,
                   rig_ids: list[str] | None = None) -> list[RigChange]:
    """Per rig of `current` (or of `rig_ids`), what changed since `baseline` (None: everything is new), sorted by
    rig id. Rigs only the baseline had are listed too (all their shards removed)."""
    old, new = _originals(baseline), _originals(current)
    # rows per original shard now minus then, per rig: > 0 added (new shards), < 0 removed (replaced, dropped)
    delta: dict[str, dict[str, int]] = {}
    for p in {*old, *new}:
        now, then = new.get(p), old.get(p)
        delta.setdefault((now or then).rig_id, {})[p] = (now.rows if now else 0) - (then.rows if then else 0)
    old_rigs = {o.rig_id for o in old.values()}
    rigs = sorted(delta) if rig_ids is None else [r for r in sorted(delta) if r in set(rig_ids)]
    out = []
    for rig in rigs:
        added = {p: d for p, d in delta[rig].items() if d > 0}
        removed = {p: -d for p, d in delta[rig].items() if d < 0}
        out.append(RigChange(
            rig_id=rig, new_rig=rig not in old_rigs,
            shards_added=len(added), rows_added=sum(added.values()),
            shards_removed=len(removed), rows_removed=sum(removed.values()),
            splits=tuple(sorted({new[p].split for p in added}))))
    return out


@dataclass(frozen=True)
class _Original:
    rig_id: str
    split: str
    rows: int  # of its rows that the manifest lists, summed over the shards that hold them


def _originals(manifest: Manifest | None) -> dict[str, _Original]:
    """Original shard path -> its rig, split and rows in `manifest` (through reshards: `ShardInfo.origins`)."""
    out: dict[str, _Original] = {}
    for s in manifest.shards if manifest is not None else []:
        for path, rows in s.origins().items():
            seen = out.get(path)
            out[path] = _Original(s.rig_id, s.split, rows + (seen.rows if seen else 0))
    return out


def describe_changes(changes: list[RigChange]) -> list[str]:
    """One line per changed rig, for the terminal and decision records; ["nothing new"] when none changed."""
    lines = []
    for c in changes:
        if not c.changed:
            continue
        what = "new rig" if c.new_rig else "more data"
        removed = f", {c.shards_removed} shard(s) / {c.rows_removed:,} rows replaced" if c.shards_removed else ""
        lines.append(f"{c.rig_id}: {what}, +{c.shards_added} shard(s) / +{c.rows_added:,} rows"
                     f" ({', '.join(c.splits) or 'no split'}){removed}")
    return lines or ["nothing new"]


def training_manifest(name: str, alias: str = "champion", *, uri: str | None = None
                      ) -> tuple[str | None, Manifest | None]:
    """(version, the manifest it was trained on) of `name@alias` in the registry at `uri`; (None, None) when there
    is no such model or alias yet (everything in the dataset is then new)."""
    from rigpose.tracking.registry import version_artifact

    found = version_artifact(name, alias, TRAINING_MANIFEST, uri=uri)
    if found is None:
        return None, None
    version, data = found
    return version, Manifest.from_json(data.decode(), source=f"models:/{name}/{version} {TRAINING_MANIFEST}")
