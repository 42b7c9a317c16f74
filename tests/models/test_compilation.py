"""Regional compilation with inductor, on the CPU: the same loss and gradients as eager, every block
sharing its graphs (no recompile per block), and the model eager again once released."""

from __future__ import annotations

import torch
import torch._dynamo
import torch._inductor.compile_fx  # imported at collection: a later test's ASCII locale cannot break it

from medmae.models import create_model
from medmae.models.compilation import RECOMPILE_LIMIT, compile_regions, release_regions


def loss_and_gradients(model, x, seeds):
    torch.manual_seed(0)  # the same drop-path draws in both runs
    model.zero_grad()
    loss = model(x, seeds=seeds, loss_only=True)[0]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# torch's config patch, not pytest's monkeypatch: pytest 9 undoes a module attribute by deleting it, which
# hides a dynamo setting for the rest of the session
@torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
def test_compiled_regions_give_the_eager_loss_and_gradients_and_compile_once_for_all_blocks():
    torch._dynamo.reset()
    model = create_model("mae_vit_tiny_patch16_3d", img_size=(32, 48, 32), drop_path_rate=0.1).train()
    x, seeds = torch.randn(2, 1, 32, 48, 32), torch.tensor([3, 8])
    eager_loss, eager_grads = loss_and_gradients(model, x, seeds)
    compile_regions(model)
    torch._dynamo.utils.counters.clear()
    compiled_loss, compiled_grads = loss_and_gradients(model, x, seeds)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    # encoder and decoder widths and lengths: two variants of each branch, and the loss; not one per block
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 5
    loss_and_gradients(model, x[:1], seeds[:1])  # a smaller last batch: one more variant of each
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 10
    release_regions(model)
    assert not any("attention" in vars(module) for module in model.modules())
