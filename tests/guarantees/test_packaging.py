"""The package installs, finds its resource folders, and the README's commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medmae
from tests.helpers import ROOT


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    *demos, tests = readme_commands()
    assert demos and all("pip install ." in demo and "medmae demo" in demo for demo in demos)
    assert "pip install" in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci and ci.index("torch==") < ci.index(tests)


def test_the_first_command_installs_the_cpu_torch_before_medmae_on_a_machine_without_a_gpu():
    """The CPU step sits in the first command a CPU user copies, not a paragraph later; a GPU user's
    command stays a plain install."""
    cpu, gpu, _ = readme_commands()
    assert cpu.index("python3 -m venv .venv") < cpu.index(CPU_TORCH) < cpu.index("pip install .")
    assert CPU_TORCH not in gpu and "pip install ." in gpu


@pytest.mark.parametrize("kind", medmae.RESOURCE_KINDS)
def test_resource_folders_are_found(kind):
    assert (medmae.resource_dir(kind) / "README.md").is_file()


def test_a_regular_install_ships_the_resource_folders(tmp_path):
    """``pip install .`` (not editable) into a folder, then import medmae from there, away from the checkout."""
    source, target = tmp_path / "source", tmp_path / "site"
    ignore = shutil.ignore_patterns("build", "*.egg-info", ".venv", ".git", "runs", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, source, ignore=ignore)  # a stale build/ folder must not hide a package left out
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    code = (
        "import medmae; print(medmae.__file__); "
        "print(*(medmae.resource_dir(k) / 'README.md' for k in medmae.RESOURCE_KINDS), sep='\\n'); "
        "from medmae.tasks import load_task, list_tasks; from medmae.data.manifests import stored_manifest; "
        "import medmae.models, medmae.training.pretrain, medmae.training.finetune, medmae.inference.evaluate; "
        "import medmae.inference.predict, medmae.commands, medmae.evaluation.figures, medmae.data.transforms; "
        "from medmae.config import stage_file, load_config; "
        "print(load_task('btcv').path, len(list_tasks()), len(stored_manifest(load_task('btcv'))['cases'])); "
        "print(stage_file('pretrain', 'btcv'), stage_file('finetune', 'btcv'), "
        "load_config('pretrain', 'btcv').model.mask_ratio)"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert all(Path(p).is_file() and p.startswith(str(target / "medmae" / "_resources")) for p in out[1:4])
    assert out[4] == str(target / "medmae" / "_resources" / "tasks" / "btcv.yaml") and out[5:7] == ["5", "30"]
    configs = target / "medmae" / "_resources" / "configs"
    assert out[7:] == [str(configs / "pretrain" / "btcv.yaml"), str(configs / "finetune" / "btcv.yaml"), "0.125"]


def test_ci_runs_the_linter_and_the_formatter_and_the_tree_passes_both():
    ci = (ROOT / ".ci" / "run").read_text()
    for check in (["check", "."], ["format", "--check", "."]):
        assert f".venv/bin/ruff {' '.join(check)}" in ci
        run = subprocess.run(
            [sys.executable, "-m", "ruff", *check],
            cwd=ROOT,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
        assert run.returncode == 0, run.stdout[-3000:]
