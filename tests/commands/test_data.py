"""``medmae data check`` and ``medmae data demo`` from the command line: exit codes and what they print."""

from __future__ import annotations

import pytest

from medmae.cli import main


def check(capsys, *args):
    code = main(["data", "check", "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_exit_codes(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDMAE_DATA", raising=False)
    code, out = check(capsys, "--task", "nosuchtask", "--data-root", str(tmp_path))
    assert code == 2 and "unknown task 'nosuchtask'" in out
    code, out = check(capsys, "--task", "btcv")
    assert code == 2 and "synapse.org" in out and "imagesTr/img0001.nii.gz" in out
    assert main(["data"]) == 2 and main([]) == 2
    with pytest.raises(SystemExit) as error:
        main(["data", "check"])
    assert error.value.code == 2
