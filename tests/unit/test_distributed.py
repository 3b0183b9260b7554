"""DDP math of the training loop: 2 gloo processes on halves of each batch take the same steps as 1 process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from rigpose_testing import synthetic_batch, to_torch

from rigpose.config import LossConfig, ModelConfig
from rigpose.model.lifter import Lifter
from rigpose.skeleton import DEEPMIMIC16
from rigpose.train.loop import train_epoch

WEIGHTS = LossConfig(hide_joint_prob=0.0)  # no random input masking: the two runs must see identical inputs
STEPS = 3


def _model() -> Lifter:
    torch.manual_seed(0)
    return Lifter(ModelConfig(width=32, num_blocks=1, dropout=0.0), num_joints=16)


def _batches() -> list[dict[str, torch.Tensor]]:
    return [to_torch(synthetic_batch(num_frames=24, seed=s, noise_px=3.0, with_3d=False)) for s in range(STEPS)]


def _epoch(model: torch.nn.Module, batches: list, *, reduce=lambda x: x, num_replicas: int = 1) -> dict:
    # plain SGD without clipping: a gradient off by any factor (e.g. DDP's 1/world averaging) changes the weights
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    _, _, means = train_epoch(model, opt, batches, DEEPMIMIC16, loss_cfg=WEIGHTS, supervision="2d", step0=0,
                              grad_clip=1e9, reduce=reduce, num_replicas=num_replicas)
    return means


def _rank(rank: int, world: int, init_file: str, out: str, num_replicas: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_model())
        # uneven halves: rank 0 gets 2/3 of every batch, so a plain per-rank mean would be biased
        cut = 16
        local = [{k: (v[:cut] if rank == 0 else v[cut:]) for k, v in b.items()} for b in _batches()]

        def reduce(x: torch.Tensor) -> torch.Tensor:
            torch.distributed.all_reduce(x)
            return x

        means = _epoch(model, local, reduce=reduce, num_replicas=num_replicas)
        torch.save({"state": model.module.state_dict(), "means": means}, f"{out}.{rank}")
        del model  # DDP's reducer holds gloo work objects: release them while the group is alive
        torch.distributed.barrier()  # neither rank closes its sockets while the other still talks
    finally:
        torch.distributed.destroy_process_group()
    # Skip interpreter finalisation: gloo's worker threads can still be joinable then, and a CI run once
    # aborted both ranks at exit ("terminate called without an active exception") after the work was saved.
    os._exit(0)


def _run_ddp(tmp_path: Path, num_replicas: int) -> list[dict]:
    out = str(tmp_path / f"ddp{num_replicas}")
    mp.spawn(_rank, args=(2, str(tmp_path / f"init{num_replicas}"), out, num_replicas), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]


def test_two_ddp_ranks_on_uneven_halves_match_one_process_on_whole_batches(tmp_path: Path) -> None:
    single = _model()
    single_means = _epoch(single, _batches())
    ranks = _run_ddp(tmp_path, num_replicas=2)
    for r in ranks:
        for name, ref in single.state_dict().items():
            torch.testing.assert_close(r["state"][name], ref, rtol=1e-4, atol=1e-5)
        assert r["means"].keys() == single_means.keys()
        for k, v in single_means.items():
            assert r["means"][k] == pytest.approx(v, rel=1e-4), k


def test_without_the_replica_factor_ddp_takes_half_steps(tmp_path: Path) -> None:
    # the reason for num_replicas: DDP averages gradients over ranks, so un-scaled losses give 1/world of the step
    start = _model().state_dict()
    single = _model()
    _epoch(single, _batches())
    unscaled = _run_ddp(tmp_path, num_replicas=1)[0]["state"]
    moved_single = sum(float((single.state_dict()[k] - start[k]).norm()) for k in start)
    moved_unscaled = sum(float((unscaled[k] - start[k]).norm()) for k in start)
    assert moved_unscaled < 0.7 * moved_single
