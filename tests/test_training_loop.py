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
