"""``medmae evaluate`` from the command line: the summary table, the files written, and refusals."""

from __future__ import annotations

from medmae.cli import main


def test_evaluate_prints_the_summary_and_what_it_wrote(capsys, demo_root, demo_checkpoint, tmp_path):
    output = tmp_path / "evaluation"
    argv = ["evaluate", "--task", "demo", "--data-root", str(demo_root), "--checkpoint", str(demo_checkpoint)]
    assert main([*argv, "--output-dir", str(output), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: task demo: 1 cases of the test part" in out and "foreground mean" in out
    assert f"wrote {output / 'per_case.csv'}, {output / 'summary.csv'}" in out
    assert sorted(p.name for p in (output / "predictions").iterdir()) == ["img0006.nii.gz"]


def test_a_checkpoint_of_another_task_is_refused(capsys, demo_root, demo_checkpoint, tmp_path):
    argv = ["evaluate", "--task", "btcv", "--data-root", str(demo_root), "--checkpoint", str(demo_checkpoint)]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    assert "trained on task demo, not btcv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
