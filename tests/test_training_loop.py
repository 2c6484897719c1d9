"""Tests of the training helpers every model family shares (bids_qa.training.loop)."""

from __future__ import annotations

import pytest


def test_fast_forward_replays_the_schedule_without_warning():
    import warnings

    import torch

    from bids_qa.training import loop

    def sched_after(steps: int) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loop.fast_forward(sched, steps)
        return sched.get_last_lr()[0]

    assert sched_after(0) == 1.0
    assert sched_after(5) == pytest.approx(0.5)


def test_file_record_and_command_name_files_not_machine_paths(tmp_path):
    import hashlib

    from bids_qa.training import loop

    init = tmp_path / "deep" / "start.safetensors"
    init.parent.mkdir()
    init.write_bytes(b"weights")
    assert loop.file_record(init) == {
        "file": "start.safetensors",
        "sha256": hashlib.sha256(b"weights").hexdigest(),
    }
    assert loop.file_record(tmp_path / "gone.safetensors") == {
        "file": "gone.safetensors",
        "sha256": None,
    }
    assert loop.file_record(None) is None
    cmd = loop.portable_command("tiers", ["--data", str(tmp_path), "--init", str(init), "--lr", "1"])
    assert cmd == f"bids_qa train tiers --data {tmp_path.name} --init start.safetensors --lr 1"


@pytest.mark.parametrize("family", ["flow", "severity", "ssim", "tiers"])
def test_shipped_weights_record_no_absolute_path(family):
    import json
    import re

    from bids_qa.models.weights import load_weights, packaged_weights

    path = packaged_weights(f"{family}.safetensors")
    if not path.is_file():
        pytest.skip(f"{path} not installed")
    meta = load_weights(path)[1]
    text = json.dumps(meta)
    assert not re.search(r'(^|[\s"=])/(work|home|tmp|scratch|data)\b', text), family
    init = meta.get("training", {}).get("init")
    if init is not None:
        assert set(init) >= {"file", "sha256"} and "/" not in init["file"]


def test_resumed_cosine_schedule_continues_at_the_uninterrupted_rate(tmp_path):
    """A run checkpointed at step 3 of 10 and resumed has, at every later step, the learning rate
    of the run that was never interrupted (the restored optimiser's rate must not be annealed
    twice)."""
    import torch

    from bids_qa.training import loop

    def fresh():
        net = torch.nn.Linear(2, 1)
        opt = torch.optim.Adam(net.parameters(), lr=0.1)
        return net, opt

    def schedule(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.005)

    net, opt = fresh()
    sched = schedule(opt)
    straight = []
    for step in range(10):
        if step == 3:
            loop.save_checkpoint(tmp_path, step, net, opt, {})
        straight.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    net, opt = fresh()
    start, _ = loop.load_checkpoint(tmp_path, net, opt)
    sched = schedule(opt)
    loop.fast_forward(sched, start)
    resumed = []
    for _ in range(start, 10):
        resumed.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert start == 3
    assert resumed == pytest.approx(straight[3:], rel=1e-12)
