"""Flags shared by subcommands: argument types refuse bad values by name, and run flags become a request."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from medmae.commands.common import add_run_flags, at_least, distance_mm, fraction, print_summary, run_request


@pytest.mark.parametrize(
    "parse, good, bad", [(fraction, "0.25", "0"), (at_least(2), "2", "1"), (distance_mm, "373.13", "inf")]
)
def test_argument_types_take_good_values_and_refuse_bad_ones(parse, good, bad):
    assert parse(good) == float(good)
    with pytest.raises(argparse.ArgumentTypeError, match=bad):
        parse(bad)


def test_run_flags_become_a_run_request():
    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    args = parser.parse_args(["--task", "demo", "--set", "train.epochs=3", "--set", "optim.base_lr=1e-3", "--resume"])
    request = run_request(args)
    assert (request.task, request.overrides, request.resume) == ("demo", ["train.epochs=3", "optim.base_lr=1e-3"], True)
    assert request.pretrained is None and request.output_dir is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "demo", "--split", "fold1", "--fold", "2"])  # one or the other


def test_a_summary_prints_its_means_beside_the_penalised_and_undefined_counts(capsys):
    summary = pd.DataFrame(
        [
            {
                "class": "liver",
                "dsc_mean": 0.91234,
                "hd95_mm_mean": float("nan"),
                "hd95_penalised": 3,
                "dsc_undefined": 0,
                "hd95_mm_undefined": 2,
                "cases": 4,
            }
        ]
    )
    print_summary(summary)
    header, line = capsys.readouterr().out.splitlines()[-2:]
    assert "0.9123" in line and " - " in line and "cases" not in header
    assert header.split().index("hd95_penalised") == header.split().index("hd95_mm_mean") + 1
    assert line.split()[3] == "3"
