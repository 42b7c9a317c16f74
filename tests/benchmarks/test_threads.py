"""The thread benchmark: one JSON line per thread count and busy-process count, with the conditions and
medmae's pick (timings are not asserted); its busy processes end with it."""

from __future__ import annotations

import json
import subprocess
import sys

import threads

from medmae.devices import available_cores, cpu_threads
from tests.helpers import BENCHMARKS


def test_each_case_gets_a_line_with_its_conditions_and_medmae_s_pick(tmp_path):
    output = tmp_path / "threads.jsonl"
    args = ["--threads", "1", "--busy", "0,1", "--seconds", "0", "--rounds", "1", "--output", str(output)]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "threads.py"), *args],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [json.loads(line) for line in output.read_text().splitlines()] == lines
    cores = available_cores()
    cases = [(line["threads"], line["busy_processes"], line["cores"]) for line in lines]
    assert cases == [(1, 0, cores), (1, 1, cores)]
    assert [line["medmae_picks"] for line in lines] == [cpu_threads(cores, 0), cpu_threads(cores, 1)]
    assert all(line["seconds_per_step"] > 0 and line["steps_timed"] >= 3 for line in lines)


def test_the_busy_processes_run_inside_the_block_and_end_with_it():
    with threads.busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(spinner.poll() is None for spinner in spinners)
    assert all(spinner.poll() is not None for spinner in spinners)
