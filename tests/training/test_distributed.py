"""One process: the same code path as under torchrun, with collectives that return their input (the
two-process behaviour is in tests/guarantees/test_ddp.py)."""

from __future__ import annotations

import torch

from medmae.training.distributed import Context, all_mean, barrier, gather, setup, teardown


def test_a_single_process_is_the_main_one_and_collectives_return_their_input(monkeypatch):
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    ctx = setup("cpu")
    assert ctx == Context(rank=0, world=1, device=torch.device("cpu")) and ctx.is_main
    value = torch.tensor(2.5)
    assert all_mean(value, ctx) is value and gather([1, 2], ctx) == [1, 2]
    barrier(ctx)
    teardown()  # no process group: nothing to leave
    assert not Context(rank=1, world=2, device=torch.device("cpu")).is_main
