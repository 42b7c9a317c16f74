"""Regional compilation: ``torch.compile`` on the repeated parts of a model rather than the whole of it.

Each transformer block's two branches (``attn(norm1(x))`` and ``mlp(norm2(x))``) and the MAE's hidden-patch
loss are compiled; the blocks share their code, so a ViT-B compiles two small graphs once instead of one
graph of the whole step, and the residual sums with drop path stay eager (their rates differ per block and
would otherwise be compiled once per block). A model without transformer blocks (DynUNet, U-Net) is
compiled whole. Shapes are static; a last batch of another size or a validation pass adds one variant each.
"""

from __future__ import annotations

import torch
from torch import nn

from medmae.models.encoder import TransformerBlock

REGIONS = ("attention", "feed_forward", "hidden_patch_loss")  # the methods compiled in place
RECOMPILE_LIMIT = 64  # variants per region: encoder and decoder widths and lengths, last batches, validation


def compile_regions(model: nn.Module, mode: str = "default", compiler=None) -> nn.Module:
    """Compile ``model``'s regions in place (returns ``model``), or the whole model (returns the compiled
    wrapper) when it has no transformer block. ``compiler`` stands in for ``torch.compile`` (tests)."""
    compiler = compiler or torch.compile
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        return compiler(model, mode=mode, dynamic=False)
    owners = [*blocks, *(m for m in model.modules() if hasattr(m, "hidden_patch_loss"))]
    for owner in owners:
        for name in REGIONS:
            if hasattr(owner, name):
                setattr(owner, name, compiler(getattr(owner, name), mode=mode, dynamic=False))
    return model


def release_regions(model: nn.Module) -> None:
    """Undo :func:`compile_regions` on ``model`` (its methods eager again)."""
    for module in model.modules():
        for name in REGIONS:
            module.__dict__.pop(name, None)
