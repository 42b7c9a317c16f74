"""``medmae info``: versions, device, where the resource folders are, every task and every model."""

from __future__ import annotations

import medmae
from medmae.cli import main
from medmae.models import list_models
from medmae.tasks import list_tasks


def test_info_lists_versions_folders_tasks_and_models(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"medmae {medmae.__version__}, torch ") and "device cpu" in out.splitlines()[0]
    for kind in medmae.RESOURCE_KINDS:
        assert f"{kind}: {medmae.resource_dir(kind)}" in out
    assert f"tasks: {', '.join(list_tasks())}" in out
    listed = [line for line in out.splitlines() if line.startswith("  ")]
    assert sorted(name for line in listed for name in line.split(": ")[1].split(", ")) == list_models()
    assert "  ViT + light decoder: light_vit_base_patch16_2d, " in out
    assert (
        "  nnU-Net ResEnc U-Nets (M, L): resenc_tiny_2d, resenc_tiny_3d, resenc_m_2d, resenc_m_3d, resenc_l_2d," in out
    )
