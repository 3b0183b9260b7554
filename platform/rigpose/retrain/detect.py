"""What is new in a dataset since a model was trained: per rig, the shards and rows the current manifest lists that
the model's training manifest did not (and those it dropped), from the two manifests alone.

Shard paths carry their writer's token, so an append shows as added shards, a `--replace` as removed + added ones,
and a new `rig_id=` partition as a new rig. The training manifest of a registered version is its run's
`dataset/manifest.json` artifact (`rigpose.train.publish`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpose.data.manifest import Manifest

#: the artifact of a training run that holds the manifest it trained on (rigpose.train.publish)
TRAINING_MANIFEST = "dataset/manifest.json"


@dataclass(frozen=True)
class RigChange:
    """One rig's difference between the baseline manifest and the current one."""

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
    old = {s.path: s for s in baseline.shards} if baseline is not None else {}
    new = {s.path: s for s in current.shards}
    rigs = sorted({s.rig_id for s in old.values()} | {s.rig_id for s in new.values()})
    if rig_ids is not None:
        rigs = [r for r in rigs if r in set(rig_ids)]
    out = []
    for rig in rigs:
        added = [s for p, s in new.items() if s.rig_id == rig and p not in old]
        removed = [s for p, s in old.items() if s.rig_id == rig and p not in new]
        out.append(RigChange(
            rig_id=rig, new_rig=not any(s.rig_id == rig for s in old.values()),
            shards_added=len(added), rows_added=sum(s.rows for s in added),
            shards_removed=len(removed), rows_removed=sum(s.rows for s in removed),
            splits=tuple(sorted({s.split for s in added}))))
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
