"""The command line: ``--version``, usage without a command, and ``python -m medmae``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import medmae
from medmae.cli import main


def test_cli_info_and_version(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"medmae {medmae.__version__}" in out and "mae_vit_base_patch16_3d" in out and "tasks:" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert main([]) == 2


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "medmae", "--version"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == f"medmae {medmae.__version__}"
