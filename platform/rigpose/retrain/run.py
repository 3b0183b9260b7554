"""One retraining cycle, and the schedule that repeats it (`rigpose retrain`).

A cycle (`retrain`):
1. reads the training job (`RetrainJob.train_job` + overrides), the dataset's latest manifest and the manifest the
   `@champion` was trained on (its run's artifact), and lists per rig what is new (`rigpose.retrain.detect`);
   nothing new: done (exit 0), and `--dry-run` stops here with what a run would do;
2. takes the retrain lease on the dataset root (`rigpose.storage.Lease`, objects `<root>/_retrain/lease.*.json`,
   with an expiry, renewed in the background while the cycle runs): a second retrain of the same dataset finds it
   held and skips, so two never promote at once, and the lease of one that died lapses by itself; under the
   lease step 1 is done again (a retrain that finished in between has moved the champion or gated this data);
3. trains a candidate on that manifest version (`data.manifest_version`: data landing meanwhile waits for the
   next cycle), warm-started from the champion's weights unless `warm_start: false` (with the champion's
   architecture where the retrain job's overrides do not set it: a champion trained before the job file's model
   defaults changed still warm-starts), tracked and registered like any training run (alias `@candidate`, lineage
   tags naming every rig);
4. gates it (`rigpose.retrain.gate.decide`): champion and candidate on every rig's validation rows, label-free;
5. records the decision (an MLflow run `retrain-decision-...` with tags and `decision.json`; tags
   `rigpose.retrain.*` on the candidate version; the printed table) and, when it passes, moves `@champion` to the
   candidate and `@previous` to the old champion (a rollback: `rigpose models promote NAME <old> --alias
   champion`).
A cycle that dies before step 5 leaves the champion untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rigpose.config import ModelConfig, RetrainJob, TrainJob, check_train_job, load_job
from rigpose.data.manifest import Manifest
from rigpose.data.reader import Dataset
from rigpose.retrain.detect import RigChange, describe_changes, diff_manifests, training_manifest
from rigpose.retrain.gate import Decision, calibration_offsets, decide, rig_scores

PREVIOUS = "previous"
LEASE_FILE = "_retrain/lease.json"
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """'30m', '6h', '1d', '45s' -> seconds; ValueError naming the setting otherwise."""
    m = _EVERY.match(text)
    if not m or float(m[1]) <= 0:
        raise ValueError(f"every: {text!r} is not a period such as 30m, 6h or 1d")
    return float(m[1]) * _UNIT_S[m[2]]


@dataclass
class Plan:
    """What a cycle found: the training job, the dataset as of now, the champion, and per rig what is new."""

    train_job: TrainJob
    dataset: Dataset
    model_name: str
    tracking_uri: str
    champion: str | None
    baseline: Manifest | None
    changes: list[RigChange]

    @property
    def nothing_new(self) -> bool:
        return not any(c.changed for c in self.changes)

    @property
    def rig_ids(self) -> list[str]:
        selected = self.train_job.data.rig_ids
        return sorted(r for r in self.dataset.manifest.rigs if selected is None or r in selected)


@dataclass
class Outcome:
    """What a cycle did: status "nothing new", "planned" (dry run), "busy" (another retrain holds the lease),
    "promoted" or "kept"; and the candidate, the decision and its MLflow run where there was one."""

    status: str
    plan: Plan
    candidate: str | None = None
    decision: Decision | None = None
    decision_run_id: str | None = None
    lines: list[str] = field(default_factory=list)


def plan(job: RetrainJob) -> Plan:
    """Step 1: the training job, the dataset's latest manifest, the champion's training manifest, what is new."""
    from rigpose.tracking.runs import resolve_target

    train_job = load_job(job.train_job, job.overrides)
    name = check_train_job(job, train_job)
    uri = resolve_target(train_job).uri
    ds = Dataset(train_job.data.url)
    champion, baseline = training_manifest(name, job.alias, uri=uri)
    changes = diff_manifests(baseline, ds.manifest, rig_ids=train_job.data.rig_ids)
    return Plan(train_job=train_job, dataset=ds, model_name=name, tracking_uri=uri, champion=champion,
                baseline=baseline, changes=changes)


def _since(p: Plan, alias: str) -> str:
    if p.champion is None:
        return f"no {p.model_name}@{alias} yet"
    trained = f"manifest version {p.baseline.version}" if p.baseline is not None else "an unknown manifest"
    return f"{p.model_name}@{alias} (version {p.champion}, trained on {trained})"


def _already_gated(p: Plan) -> tuple[str, str] | None:
    """(version, reason) of a candidate already gated on exactly this manifest (tag rigpose.retrain.manifest_sha256):
    a kept candidate is not trained again until the data changes."""
    from rigpose.tracking.registry import client_for
    from rigpose.train.trainer import manifest_sha256

    sha = manifest_sha256(p.dataset)
    for mv in client_for(p.tracking_uri).search_model_versions(f"name='{p.model_name}'"):
        tags = mv.tags or {}
        if tags.get("rigpose.retrain.manifest_sha256") == sha:
            return str(mv.version), tags.get("rigpose.retrain.reason", "")
    return None


def inherit_architecture(overrides: list[str], champion: ModelConfig) -> list[str]:
    """`model.<field>=<value>` overrides that give a warm-started candidate the champion's architecture (the fields
    whose shapes the weights fix, `rigpose.train.trainer.SHAPE_FIELDS`), except those `overrides` set themselves
    (a mismatch there fails the warm start, naming the field)."""
    from rigpose.train.trainer import SHAPE_FIELDS

    stated = {o.split("=", 1)[0].strip() for o in overrides}
    return [f"model.{k}={getattr(champion, k)}" for k in SHAPE_FIELDS if f"model.{k}" not in stated]


def candidate_job(job: RetrainJob, p: Plan, champion_file: str | None) -> TrainJob:
    """The training job of the candidate: pinned to the manifest version the cycle read, one run name per version
    (a re-run after a crash resumes it), warm-started from the champion when asked (`champion_file`: its model.pt,
    already downloaded, for its architecture)."""
    from rigpose.train.trainer import manifest_sha256

    version = p.dataset.manifest.version
    sets = [*job.overrides, f"data.manifest_version={version}",
            f"run.name=retrain-v{version}-{manifest_sha256(p.dataset)[:8]}"]
    if job.warm_start and p.champion is not None:
        from rigpose.model.checkpoint import load_lifter

        if champion_file is None:
            raise ValueError(f"candidate_job: warm start from version {p.champion} needs the champion's model file")
        champion = load_lifter(champion_file)[0].config
        sets = [*inherit_architecture(job.overrides, champion), *sets, *warm_schedule(job, p.train_job),
                f"model.init_weights=models:/{p.model_name}/{p.champion}"]
    return load_job(job.train_job, sets)


def warm_schedule(job: RetrainJob, train_job: TrainJob) -> list[str]:
    """`optim.*` overrides of a warm-started candidate: `job.warm_budget` of the training job's budget (steps, or
    epochs, and min_steps; at least 1 of each that is set) at `job.warm_lr` of its learning rate. A warm start
    begins near its end point: the scratch schedule's full budget at the full rate mostly throws the head start
    away (BENCHMARKS.md, "Retraining on a new rig")."""
    o = train_job.optim
    sets = []
    if job.warm_budget != 1.0:
        if o.epochs is not None:
            sets.append(f"optim.epochs={max(1, round(o.epochs * job.warm_budget))}")
        else:
            sets.append(f"optim.steps={max(1, round(o.steps * job.warm_budget))}")
        if o.min_steps:
            sets.append(f"optim.min_steps={max(1, round(o.min_steps * job.warm_budget))}")
    if job.warm_lr != 1.0:
        sets.append(f"optim.lr={o.lr * job.warm_lr:.6g}")
    return sets


def retrain(job: RetrainJob, *, dry_run: bool = False, say: Callable[[str], None] = print) -> Outcome:
    """One cycle (module docstring). Raises ValueError/RuntimeError with one line on bad input or a failed step;
    the champion is moved only at the very end."""
    from rigpose.storage import Lease, LeaseHeld, url_to_fs

    p = plan(job)
    out = Outcome(status="nothing new", plan=p)

    def tell(line: str) -> None:
        out.lines.append(line)
        say(line)

    if _settled(p, job.alias, tell):
        return out
    targets = _tell_changes(p, job.alias, tell)
    if dry_run:
        start = (f"warm-started from version {p.champion}" if job.warm_start and p.champion is not None
                 else "from scratch")
        tell(f"would train a candidate on manifest version {p.dataset.manifest.version} ({len(p.rig_ids)} rigs: "
             f"{', '.join(p.rig_ids)}), {start}, then compare it with the champion on split {job.gate.split!r} "
             f"of every rig: {', '.join(targets)} must improve by {100 * job.gate.margin:.1f}%, the others may "
             f"not get worse by more than {100 * job.gate.tolerance:.1f}%")
        out.status = "planned"
        return out
    fs, path = url_to_fs(p.dataset.root)
    owner = f"{socket.gethostname()}:{os.getpid()}:retrain"
    try:
        lease = Lease(fs, posixpath.join(path, LEASE_FILE), owner=owner, ttl_s=job.lease_ttl_s, wait_s=0)
        lease.acquire()
    except LeaseHeld as e:
        tell(f"another retrain of {p.dataset.root} is running ({e}); skipping this cycle")
        out.status = "busy"
        return out
    try:
        # planned again under the lease: a retrain that finished between this cycle's plan and its lease has moved
        # the champion or gated this data, and this cycle must not train (and promote) on the stale plan
        fresh = plan(job)
        if (fresh.champion, fresh.dataset.manifest.version) != (p.champion, p.dataset.manifest.version):
            tell(f"another retrain finished since this cycle planned ({_since(fresh, job.alias)}): planned again")
            out.plan = p = fresh
            if _settled(p, job.alias, tell):
                return out
            targets = _tell_changes(p, job.alias, tell)
        elif _settled(fresh, job.alias, tell):
            return out
        with _kept_alive(lease, every_s=job.lease_ttl_s / 3), tempfile.TemporaryDirectory() as tmp:
            return _train_gate_promote(job, p, out, tell, lease, targets, tmp)
    finally:
        lease.release()


def _settled(p: Plan, alias: str, tell: Callable[[str], None]) -> bool:
    """True (said why) when `p` leaves nothing to do: no new data since the champion, or this exact manifest was
    already gated."""
    version = p.dataset.manifest.version
    if p.nothing_new:
        tell(f"nothing new in {p.dataset.root} (manifest version {version}) since {_since(p, alias)}")
        return True
    if (gated := _already_gated(p)) is not None:
        tell(f"nothing new in {p.dataset.root}: manifest version {version} was already gated (candidate version "
             f"{gated[0]}: {gated[1]})")
        return True
    return False


def _tell_changes(p: Plan, alias: str, tell: Callable[[str], None]) -> list[str]:
    """Say what is new per rig; the rigs with new data (the gate's targets), sorted."""
    tell(f"new in {p.dataset.root} (manifest version {p.dataset.manifest.version}) since {_since(p, alias)}:")
    for line in describe_changes(p.changes):
        tell(f"  {line}")
    return sorted(c.rig_id for c in p.changes if c.changed)


@contextlib.contextmanager
def _kept_alive(lease: Any, *, every_s: float) -> Iterator[None]:
    """Renew `lease` every `every_s` in a background thread while the block runs (training takes longer than any
    sensible expiry). A lost lease stops the renewals; the explicit `renew()` before promoting then refuses."""
    from rigpose.storage import LeaseError

    done = threading.Event()

    def renew() -> None:
        while not done.wait(every_s):
            try:
                lease.renew()
            except (LeaseError, OSError):
                return

    thread = threading.Thread(target=renew, name="rigpose-retrain-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=30)


def _train_gate_promote(job: RetrainJob, p: Plan, out: Outcome, tell: Callable[[str], None], lease: Any,
                        targets: list[str], tmp: str) -> Outcome:
    from rigpose.tracking.registry import download_lifter_file, promote
    from rigpose.tracking.runs import record_run, resolve_target
    from rigpose.train.trainer import manifest_sha256, train

    # the champion's weights, once: its architecture for the warm start, its scores for the gate
    champion_file = (download_lifter_file(f"models:/{p.model_name}/{p.champion}", tmp, tracking_uri=p.tracking_uri)
                     if p.champion is not None else None)
    cjob = candidate_job(job, p, champion_file)
    tell(f"training candidate run {cjob.run.name!r} on manifest version {p.dataset.manifest.version}"
         + (f", warm-started from {p.model_name} version {p.champion}" if cjob.model.init_weights else ""))
    result = train(cjob)
    lease.renew()
    now = Dataset(p.dataset.root).manifest.version
    if now != p.dataset.manifest.version:
        tell(f"the dataset changed while the candidate trained (manifest version {p.dataset.manifest.version} -> "
             f"{now}): the candidate trained on version {p.dataset.manifest.version}; the next cycle takes the rest")
    registered = (result.get("tracking") or {}).get("registered")
    if registered is None:
        raise RuntimeError(f"the candidate of run {cjob.run.name!r} was not registered (see above); the champion "
                           "is unchanged")
    out.candidate = str(registered.version)
    g = job.gate
    tell(f"gate: {p.model_name} version {out.candidate} (candidate) vs version {p.champion} (@{job.alias}) on split "
         f"{g.split!r} of every rig")
    cand = rig_scores(result["model"], p.dataset.root, split=g.split, rig_ids=p.rig_ids, max_rows=g.max_rows)
    champ = None
    if champion_file is not None:
        champ = rig_scores(champion_file, p.dataset.root, split=g.split, rig_ids=p.rig_ids, max_rows=g.max_rows)
    offsets = calibration_offsets(p.dataset.root, split=g.split, rig_ids=p.rig_ids, max_rows=g.max_rows)
    lease.renew()
    decision = decide(cand, champ, targets=set(targets), rig_ids=p.rig_ids, margin=g.margin, tolerance=g.tolerance,
                      offsets=offsets, max_offset_px=g.max_offset_px)
    out.decision = decision
    for line in decision.table():
        tell(f"  {line}")
    tell(decision.reason)
    record = {"model": p.model_name, "candidate_version": out.candidate, "champion_version": p.champion,
              "alias": job.alias, "dataset": p.dataset.root, "manifest_version": p.dataset.manifest.version,
              "manifest_sha256": manifest_sha256(p.dataset), "changes": [c.__dict__ for c in p.changes],
              "targets": targets, "gate": g.model_dump(), "decision": decision.to_dict(),
              "promoted": decision.promote, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tags = {"rigpose.retrain.promoted": str(decision.promote).lower(), "rigpose.retrain.reason": decision.reason,
            "rigpose.retrain.candidate_version": out.candidate,
            "rigpose.retrain.champion_version": p.champion or "none",
            "rigpose.retrain.manifest_version": str(p.dataset.manifest.version),
            "rigpose.retrain.manifest_sha256": manifest_sha256(p.dataset),
            "rigpose.retrain.rigs": ",".join(p.rig_ids), "rigpose.retrain.targets": ",".join(targets)}
    target = resolve_target(cjob)
    out.decision_run_id = record_run(target, f"retrain-decision-v{out.candidate}", tags=tags,
                                     artifacts={"decision.json": json.dumps(record, indent=1).encode()})
    from rigpose.tracking.registry import client_for

    client = client_for(p.tracking_uri)
    for key, value in {**tags, "rigpose.retrain.decision_run": out.decision_run_id}.items():
        client.set_model_version_tag(p.model_name, out.candidate, key, value[:5000])
    if decision.promote:
        lease.renew()  # LeaseLost (a RuntimeError) when another retrain took over: then nothing is promoted
        if p.champion is not None:
            promote(p.model_name, p.champion, PREVIOUS, uri=p.tracking_uri)
        promote(p.model_name, out.candidate, job.alias, uri=p.tracking_uri)
        tell(f"{p.model_name}@{job.alias} is now version {out.candidate}"
             + (f" (@{PREVIOUS}: version {p.champion})" if p.champion else ""))
        out.status = "promoted"
    else:
        tell(f"{p.model_name}@{job.alias} stays on version {p.champion}; candidate version {out.candidate} keeps "
             "@candidate")
        out.status = "kept"
    return out


def run_every(job: RetrainJob, *, dry_run: bool = False, say: Callable[[str], None] = print,
              cycle: Callable[..., Outcome] = retrain, stop: threading.Event | None = None) -> int:
    """Run a cycle now and then every `job.every` until SIGTERM/SIGINT (or `stop` is set); a failed cycle is
    reported and the schedule goes on. Returns the number of cycles run."""
    period = parse_every(job.every or "")
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    cycles = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                cycle(job, dry_run=dry_run, say=say)
            except (ValueError, RuntimeError) as e:
                say(f"retrain cycle failed: {e}; next try in {job.every}")
            cycles += 1
            stop.wait(max(0.0, period - (time.monotonic() - started)))
        say(f"retrain schedule stopped after {cycles} cycle(s)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return cycles
