"""Does the retraining gate decide as MPJPE would? Its label-free decision against the same rule on MPJPE, over a
set of retrain scenarios (issue #15: agreement in >= 90% of them).

One run, one process, local Ray, a sqlite MLflow registry in a temporary folder, jobs/retrain.yaml's settings
(`--set key=value` overrides them) and jobs/train.yaml's lifter and schedule, with shorter budgets to fit a 2-core
machine: the champion trains `--champion-steps`, and the candidates' training job has `--steps` (optim.steps), of
which a warm-started candidate trains retrain.yaml's `warm_budget` (0.5) at `warm_lr` (0.3) of the rate. The
champion gets the longer budget so that it is near its plateau, as a production champion is: a candidate must then
earn its improvement from the new data, not from more steps on the old.

1. the champion: the shipped demo recipe (real motion capture, detector-like noise) through `h36m-s1`, `--frames`
   frames, trained by a first `rigpose.retrain.run.retrain` cycle (no champion yet: promoted);
2. per scenario, independently: a copy of that dataset (same shards, so only the new rig is new), the scenario's
   new rig added to it (the demo recipe through that rig, with the scenario's changes), and a second cycle that
   trains a candidate warm-started from the champion and gates it; `@champion` is put back afterwards, so every
   scenario starts from the same champion and registry state;
3. per scenario, the gate's decision (`rigpose.retrain.gate.decide` on the held-out-view px) and the MPJPE-based
   decision (`mpjpe_decision`: the same rule, `margin` on the new rig and `tolerance` on the old one, applied to
   MPJPE), and whether they agree.

The figures, per scenario and rig, for the champion (zero-shot on the new rig) and the candidate, all on split
`gate.split` (val):
- px: the gate's own figure, single-view held-out-view reprojection error on the dataset the user has (for a
  corrupted-calibration rig: its rows carry the drifted cameras, and the gate projects through them);
- mm (truth): single-view root-relative MPJPE in the camera frame against the true joints_3d, in the TRUE camera
  frame. For the old rig and an exactly calibrated new rig with `--frames` frames these are the gate table's own
  MPJPE (the rows are the truth). For a corrupted-calibration scenario the rows' cameras are the drifted ones, so
  the gate table's MPJPE compares the lift with the truth turned into a wrong camera frame (by the rotation error);
  the truth figure is measured instead on a twin dataset: the same recipe and seed with exact calibration, which
  has the same 2D (the recipe's calibration_error changes only the stated cameras; rotation and translation
  only here, so the single-view lift, which reads the 2D and K, is the same). For a too-little-data scenario
  (whose own val rows are few or none) the twin has `--frames` frames of the new rig: labelled data enough to
  tell whether the candidate got better there;
- mm (rows' cameras): the gate table's MPJPE, shown where it is not the truth figure.
- world mm: the world-frame MPJPE of the default multi-view answer (`rigpose evaluate --mode multi`, the
  posterior) on each rig's rows through the calibration they carry, against joints_3d (the world truth): what a
  user gets on that rig; the scenario's own rows, or the truth twin's where it has none there.
Two reference rules, each `mpjpe_decision` (the gate's rule on MPJPE): the single-view rule on the truth figures
(root-relative in the camera frame, so it reads no extrinsics: blind to a corrupted calibration by construction),
and the world rule on the world figures. A candidate the gate cannot measure on the new rig (no val rows)
is refused by the gate; the MPJPE rule has the twin's rows there.

    .venv/bin/python bench/gate_bench.py [--frames 6000] [--champion-steps 700] [--steps 300]
                                         [--scenarios NAME,...] [--set k=v] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from retrain_bench import REPO, _recipe
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rigpose.config import RetrainJob
    from rigpose.retrain.gate import Decision, RigScore, RigVerdict
    from rigpose.retrain.run import Outcome

console = Console(width=240)


@dataclass(frozen=True)
class Scenario:
    """One retrain: the champion's dataset plus a new rig built from the demo recipe with these changes."""

    name: str
    what: str
    rig: str
    frames: int | None = None  # frames of the new rig; None = --frames
    noise: dict[str, Any] = field(default_factory=dict)  # recipe `noise` keys replacing the demo's
    calibration_error: dict[str, float] = field(default_factory=dict)  # recipe `calibration_error`
    splits: dict[str, Any] = field(default_factory=dict)  # recipe `splits` keys replacing the demo's

    @property
    def exact(self) -> bool:
        return not any(self.calibration_error.values())


NOISY = {"pixel_std": 15.0, "outlier_rate": 0.06}  # the demo's detector: 5 px, 2% outliers
SCENARIOS = (
    Scenario("good/studio-8", "good new data: an 8-camera studio ring", "studio-8"),
    Scenario("good/humaneva-s2", "good new data: HumanEva-I S2's 3 cameras, other lenses", "humaneva-s2"),
    Scenario("good/h36m-s5", "good new data: H36M S5, the old rig's cameras moved 1-2.4 deg / ~25 cm", "h36m-s5"),
    Scenario("calib/studio-8 2deg", "studio-8, calibration off by 2 deg and 3 cm per camera", "studio-8",
             calibration_error={"rotation_deg": 2.0, "translation_m": 0.03}),
    Scenario("calib/studio-8 5deg", "studio-8, calibration off by 5 deg and 10 cm per camera", "studio-8",
             calibration_error={"rotation_deg": 5.0, "translation_m": 0.10}),
    Scenario("calib/humaneva-s2 2deg", "humaneva-s2, calibration off by 2 deg and 3 cm per camera", "humaneva-s2",
             calibration_error={"rotation_deg": 2.0, "translation_m": 0.03}),
    Scenario("little/studio-8 60", "too little data: 60 frames of studio-8 (2 sequences, both train: no val rows)",
             "studio-8", frames=60),
    Scenario("little/studio-8 300", "too little data: 300 frames of studio-8, every sequence cut in time 80/10/10 "
             "(a few dozen val rows)", "studio-8", frames=300, splits={"by": "time"}),
    Scenario("noisy/studio-8", "a noisier detector on studio-8: 3x pixel noise (15 px), 3x outliers (6%)",
             "studio-8", noise=NOISY),
    Scenario("noisy/humaneva-s2", "a noisier detector on humaneva-s2: 3x pixel noise, 3x outliers", "humaneva-s2",
             noise=NOISY),
)


def mpjpe_decision(candidate: dict[str, RigScore], champion: dict[str, RigScore], *, targets: set[str],
                   rig_ids: list[str], margin: float, tolerance: float) -> Decision:
    """The gate's rule (`rigpose.retrain.gate.decide`) on MPJPE (mm) instead of the held-out-view px: every rig in
    `targets` improves by at least `margin` (relative), no other rig gets worse by more than `tolerance`.
    `candidate`, `champion`: {rig_id: RigScore}; rigs without an MPJPE count as unmeasured."""
    from rigpose.retrain.gate import RigScore, decide

    def by_mm(scores: dict[str, RigScore]) -> dict[str, RigScore]:
        return {r: RigScore(heldout_px=s.mpjpe_mm, mpjpe_mm=s.mpjpe_mm, frames=s.frames)
                for r, s in scores.items() if s.mpjpe_mm is not None}

    return decide(by_mm(candidate), by_mm(champion), targets=targets, rig_ids=rig_ids, margin=margin,
                  tolerance=tolerance)


def scenario_recipe(folder: Path, s: Scenario, frames: int, *, exact: bool = False) -> str:
    """The demo recipe through `s.rig` with the scenario's frames, noise, calibration error and splits (with
    `exact`, the truth twin: `frames` frames, the scenario's noise, exact calibration, the demo's splits), written
    into `folder`; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(_recipe(folder, s.rig, frames if exact else s.frames or frames))
    d = yaml.safe_load(path.read_text())
    d["noise"] = {**d["noise"], **s.noise}
    if not exact:
        d["calibration_error"] = dict(s.calibration_error)
        d["splits"] = {**d["splits"], **s.splits}
    path.write_text(yaml.safe_dump(d))
    return str(path)


def _scores(rows: tuple[RigVerdict, ...], side: str) -> dict[str, RigScore]:
    """{rig_id: RigScore} of one side ("champion" / "candidate") of a gate's table."""
    return {r.rig_id: getattr(r, side) for r in rows if getattr(r, side) is not None}


def _record(s: Scenario, frames: int, **fields: Any) -> dict[str, Any]:
    return {"scenario": s.name, "what": s.what, "rig": s.rig, "frames": s.frames or frames, "noise": s.noise,
            "calibration_error": s.calibration_error, "splits": s.splits, **fields}


def run_scenario(s: Scenario, job: RetrainJob, *, tmp: Path, base: str, frames: int, steps: int,
                 champion_file: str) -> dict[str, Any]:
    """Steps 2-3 of the module docstring for one scenario; the champion alias is restored afterwards. A cycle that
    fails (its training diverged, say) leaves the champion as it was, as `rigpose retrain` does: recorded with its
    error and no decision."""
    from rigpose.data.synth.build import build_dataset
    from rigpose.retrain.run import retrain
    from rigpose.tracking.registry import promote

    t0, folder = time.time(), tmp / s.name.replace("/", "-").replace(" ", "-")
    data = str(folder / "dataset")
    shutil.copytree(base, data)
    build_dataset(scenario_recipe(folder, s, frames), data, progress=False)
    sjob = job.model_copy(update={"overrides": [*job.overrides, f"data.url={data}", f"optim.steps={steps}"]})
    try:
        out = retrain(sjob, say=lambda line: console.print(f"  [{s.name}] {line}", highlight=False, markup=False))
    except (RuntimeError, ValueError) as e:  # the champion is untouched: retrain moves it only at the very end
        return _record(s, frames, failed=str(e).splitlines()[0], rows=[], gate_promote=None, mpjpe_promote=None,
                       agree=None, wall_s=time.time() - t0)
    d, p, g = out.decision, out.plan, sjob.gate
    assert d is not None and p.champion is not None, out.lines
    try:
        truth_champ, truth_cand = _truth(s, sjob, out, folder=folder, frames=frames, champion_file=champion_file)
        m = mpjpe_decision(truth_cand, truth_champ, targets={s.rig}, rig_ids=p.rig_ids, margin=g.margin,
                           tolerance=g.tolerance)
        world_champ, world_cand = _world(s, sjob, out, folder=folder, champion_file=champion_file)
        w = mpjpe_decision(world_cand, world_champ, targets={s.rig}, rig_ids=p.rig_ids, margin=g.margin,
                           tolerance=g.tolerance)
    finally:
        promote(p.model_name, p.champion, sjob.alias, uri=p.tracking_uri)  # the next scenario's champion
    rows = []
    for r in d.rows:
        tc, tk = truth_champ.get(r.rig_id), truth_cand.get(r.rig_id)
        rows.append({"rig": r.rig_id, "new": r.rig_id == s.rig,
                     "champion_px": r.champion.heldout_px if r.champion else None,
                     "candidate_px": r.candidate.heldout_px if r.candidate else None,
                     "champion_mm": tc.mpjpe_mm if tc else None, "candidate_mm": tk.mpjpe_mm if tk else None,
                     "gate_champion_mm": r.champion.mpjpe_mm if r.champion else None,
                     "gate_candidate_mm": r.candidate.mpjpe_mm if r.candidate else None,
                     "gate_frames": r.candidate.frames if r.candidate else 0,
                     "truth_frames": tk.frames if tk else 0, "truth_is_gate_rows": tk is r.candidate,
                     "champion_world_mm": _mm(world_champ.get(r.rig_id)),
                     "candidate_world_mm": _mm(world_cand.get(r.rig_id)),
                     "offset_px": r.offset_px, "offset_camera": r.offset_camera})
    return _record(s, frames, rows=rows, gate_promote=d.promote, gate_reason=d.reason, mpjpe_promote=m.promote,
                   mpjpe_reason=m.reason, agree=d.promote == m.promote, world_promote=w.promote,
                   world_reason=w.reason, agree_world=d.promote == w.promote, candidate_version=out.candidate,
                   wall_s=time.time() - t0)


def _mm(score: RigScore | None) -> float | None:
    return score.mpjpe_mm if score is not None else None


def _candidate_model(job: RetrainJob, out: Outcome, champion_file: str) -> str:
    from rigpose.retrain.run import candidate_job

    p = out.plan
    return str(Path(p.train_job.run.output_dir) / candidate_job(job, p, champion_file).run.name / "model.pt")


def _world(s: Scenario, job: RetrainJob, out: Outcome, *, folder: Path,
           champion_file: str) -> tuple[dict[str, RigScore], dict[str, RigScore]]:
    """({rig: RigScore} of the champion, of the candidate) whose figure is the world-frame MPJPE (mm) of the default
    multi-view answer (`rigpose evaluate --mode multi`: the posterior) on each rig's `gate.split` rows through the
    calibration the rows carry: what a user gets on that rig. The scenario's own rows where it has them there (for
    a corrupted calibration: the drifted cameras, joints_3d the world truth), else the truth twin's."""
    from rigpose.data.reader import Dataset
    from rigpose.inference.evaluate import evaluate
    from rigpose.retrain.gate import RigScore

    p, g = out.plan, job.gate
    own, twin = p.dataset.root, str(folder / "truth")
    model = _candidate_model(job, out, champion_file)
    champ: dict[str, RigScore] = {}
    cand: dict[str, RigScore] = {}
    for rig in p.rig_ids:
        data = own if Dataset(own).shards(splits=[g.split], rig_ids=[rig]) else twin
        if data == twin and not Path(twin).exists():
            continue
        for scores, path in ((champ, champion_file), (cand, model)):
            report = evaluate(path, data, split=g.split, modes=("multi",), max_rows=g.max_rows, rig_ids=[rig],
                              multi_heldout=False)
            mm = report["multi"][report["multi_mode"]]["overall"].get("mpjpe_mm")
            if mm is not None:
                scores[rig] = RigScore(heldout_px=float(mm), mpjpe_mm=float(mm), frames=int(report["num_frames"]))
    return champ, cand


def _truth(s: Scenario, job: RetrainJob, out: Outcome, *, folder: Path, frames: int,
           champion_file: str) -> tuple[dict[str, RigScore], dict[str, RigScore]]:
    """({rig: RigScore} of the champion, of the candidate) with MPJPE against the truth (module docstring): the
    gate's own table, with the new rig measured on the truth twin where the scenario's rows are not the truth."""
    from rigpose.data.synth.build import build_dataset
    from rigpose.retrain.gate import rig_scores

    d, g = out.decision, job.gate
    champ, cand = _scores(d.rows, "champion"), _scores(d.rows, "candidate")
    if s.exact and (s.frames or frames) >= frames:
        return champ, cand
    twin = str(folder / "truth")
    build_dataset(scenario_recipe(folder / "twin", s, frames, exact=True), twin, progress=False)
    model = _candidate_model(job, out, champion_file)
    for scores, path in ((champ, champion_file), (cand, model)):
        scores.pop(s.rig, None)
        scores.update(rig_scores(path, twin, split=g.split, rig_ids=[s.rig], max_rows=g.max_rows))
    return champ, cand


def summary_line(res: dict[str, Any]) -> str:
    """One line per scenario: both decisions with their reasons, or why there was no candidate."""
    if res.get("failed"):
        return f"{res['scenario']}: no candidate, the cycle failed (champion kept): {res['failed']}"
    return (f"{res['scenario']}: gate {res['gate_reason']} | MPJPE rule {res['mpjpe_reason']} | world rule "
            f"{res['world_reason']}")


def _pct(a: float | None, b: float | None, unit: str, digits: int) -> str:
    if a is None or b is None:
        return f"{'-' if a is None else f'{a:.{digits}f}'} -> {'-' if b is None else f'{b:.{digits}f}'} {unit}"
    return f"{a:.{digits}f} -> {b:.{digits}f} {unit} ({100 * (b / a - 1):+.1f}%)"


def print_table(results: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col in ("scenario", "rig", "held-out px: champion -> candidate", "calib px", "single-view MPJPE (truth)",
                "mm, rows' cameras", "world mm, multi-view", "gate", "single rule", "agree", "world rule", "agree"):
        table.add_column(col, justify="left" if col in ("scenario", "rig") else "right")

    def verdict(promote: bool | None) -> str:
        return "-" if promote is None else "promote" if promote else "keep"

    def yes(agree: bool | None) -> str:
        return "-" if agree is None else "yes" if agree else "[bold red]NO[/]"

    for res in results:
        if res.get("failed"):
            table.add_row(res["scenario"], res["rig"] + " (new)", f"no candidate: {res['failed'][:90]}", "", "", "",
                          "", "(failed)", "-", "-", "-", "-", end_section=True)
        for i, r in enumerate(res["rows"]):
            gate_mm = ("=" if r["truth_is_gate_rows"] else
                       _pct(r["gate_champion_mm"], r["gate_candidate_mm"], "", 1) if r["gate_frames"] else "no rows")
            first = i == 0
            table.add_row(res["scenario"] if first else "", r["rig"] + (" (new)" if r["new"] else ""),
                          _pct(r["champion_px"], r["candidate_px"], "px", 2),
                          "-" if r.get("offset_px") is None else f"{r['offset_px']:.1f}",
                          _pct(r["champion_mm"], r["candidate_mm"], "mm", 1), gate_mm,
                          _pct(r.get("champion_world_mm"), r.get("candidate_world_mm"), "mm", 1),
                          verdict(res["gate_promote"]) if first else "",
                          verdict(res["mpjpe_promote"]) if first else "", yes(res["agree"]) if first else "",
                          verdict(res.get("world_promote")) if first else "",
                          yes(res.get("agree_world")) if first else "",
                          end_section=i == len(res["rows"]) - 1)
    console.print(table)


def agreement(results: list[dict[str, Any]], key: str) -> tuple[int, int]:
    """(scenarios whose gate decision agrees with the rule `key`, scenarios with a decision)."""
    decided = [r for r in results if r.get(key) is not None]
    return sum(bool(r[key]) for r in decided), len(decided)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-rig", default="h36m-s1")
    ap.add_argument("--frames", type=int, default=6000, help="Frames of the old rig and of each new rig (the demo "
                                                             "recipe has 30000); a scenario may set its own.")
    ap.add_argument("--champion-steps", type=int, default=700, help="The champion's optim.steps.")
    ap.add_argument("--steps", type=int, default=300, help="The candidates' training job's optim.steps (a warm "
                                                           "candidate trains warm_budget of it).")
    ap.add_argument("--scenarios", default="", help="Comma-separated scenario names (default: all): "
                                                    + ", ".join(s.name for s in SCENARIOS))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a key of jobs/retrain.yaml (repeatable), e.g. gate.margin=0.03.")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder (datasets, runs, registry).")
    args = ap.parse_args()
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios.split(",")]
    if unknown := set(filter(None, args.scenarios.split(","))) - {s.name for s in SCENARIOS}:
        raise ValueError(f"--scenarios: unknown {sorted(unknown)}")

    import torch

    from rigpose.cli.ui import configure_output
    from rigpose.cluster.connect import init_ray
    from rigpose.config import RetrainJob, load_config
    from rigpose.data.synth.build import build_dataset
    from rigpose.retrain.run import retrain
    from rigpose.tracking.registry import download_lifter_file

    torch.set_num_threads(1)
    configure_output(verbose=False)
    t0, tmp = time.time(), Path(tempfile.mkdtemp(prefix="rigpose-gate-bench-"))
    base = str(tmp / "champion-dataset")
    build_dataset(_recipe(tmp, args.old_rig, args.frames), base, progress=False)
    overrides = [f"data.url={base}", f"run.output_dir={tmp / 'runs'}", "tracking.model_name=bench-lifter",
                 f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.eval_max_rows=500",
                 f"optim.steps={args.champion_steps}"]
    job = load_config(RetrainJob, REPO / "jobs" / "retrain.yaml", args.sets)
    job = job.model_copy(update={"train_job": str(REPO / "jobs" / "train.yaml"),
                                 "overrides": [*job.overrides, *overrides]})
    init_ray(None)
    first = retrain(job, say=print)
    assert first.status == "promoted" and first.candidate is not None, first.lines
    champion_s = time.time() - t0
    champion_file = download_lifter_file(f"models:/{first.plan.model_name}/{first.candidate}", str(tmp / "champion"),
                                         tracking_uri=first.plan.tracking_uri)
    results = []
    for s in chosen:
        results.append(run_scenario(s, job, tmp=tmp, base=base, frames=args.frames, steps=args.steps,
                                    champion_file=champion_file))
        console.print(summary_line(results[-1]), highlight=False, markup=False)
        if args.json:  # so far, in case a later scenario takes the process down
            args.json.write_text(json.dumps({"scenarios": results, "partial": True}, indent=1))

    g = job.gate
    print_table(results, f"gate vs MPJPE rules: champion {args.old_rig} ({args.frames} frames, {args.champion_steps} "
                         f"steps), one new rig per scenario (candidates warm, {job.warm_budget:g} x {args.steps} "
                         f"steps), split {g.split!r}, margin {100 * g.margin:g}% on the new rig, tolerance "
                         f"{100 * g.tolerance:g}% on the old, calibration limit {g.max_offset_px} px")
    for res in results:
        console.print(f"{res['scenario']}: {res['what']}", highlight=False, markup=False)
    failed = [r["scenario"] for r in results if r["agree"] is None]
    shares = {}
    for key, what in (("agree", "single-view MPJPE rule (camera frame, root-relative: reads no extrinsics)"),
                      ("agree_world", "world-frame multi-view MPJPE rule (through the rows' calibration)")):
        agreed, decided = agreement(results, key)
        shares[key] = agreed / decided if decided else float("nan")
        console.print(f"agreement with the {what}: {agreed} / {decided} scenarios = {100 * shares[key]:.0f}% "
                      f"(goal >= 90%: {'met' if shares[key] >= 0.9 else 'NOT met'})", highlight=False, markup=False)
    if failed:
        console.print(f"no candidate (the cycle failed, the champion kept): {', '.join(failed)}", highlight=False,
                      markup=False)
    console.print(f"whole benchmark: {time.time() - t0:.0f} s (champion {champion_s:.0f} s); command: "
                  ".venv/bin/python bench/gate_bench.py " + shlex.join(sys.argv[1:]), highlight=False)
    if args.json:
        args.json.write_text(json.dumps({"scenarios": results, "share": shares["agree"],
                                         "share_world": shares["agree_world"],
                                         "frames": args.frames, "champion_steps": args.champion_steps,
                                         "steps": args.steps, "gate": g.model_dump(),
                                         "warm_budget": job.warm_budget, "warm_lr": job.warm_lr,
                                         "champion_s": champion_s, "wall_s": time.time() - t0}, indent=1))
    if args.keep:
        console.print(f"kept {tmp}", highlight=False)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
