"""Seed sweeps: ``vlalign train --seeds``, the seed-spec parser and the aggregation over runs."""

import json
import math
import os
import shutil
import signal
import sys
import threading
import time

import pytest
from reliability_helpers import assert_same_checkpoint

from vlalign.checkpoint import latest_checkpoint
from vlalign.cli import main
from vlalign.errors import ConfigError, VlalignError
from vlalign.eval.aggregate import aggregate, flatten_results, stats, summarize
from vlalign.train import GracefulStop
from vlalign.train.processes import run_in_processes
from vlalign.train.seeds import parse_seeds


@pytest.mark.parametrize("spec, seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]),
                                         ("0-2,7", [0, 1, 2, 7]), (" 1 - 2 , 9 ", [1, 2, 9]), ("5-5", [5])])
def test_seed_specs(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec, why", [("", "at least one seed"), ("a", "'a' is not a seed"),
                                       ("-1", "'-1' is not a seed"), ("1.5", "'1.5' is not a seed"),
                                       ("0-2-4", "'0-2-4' is not a seed"), ("4-0", "runs backwards"),
                                       ("0-2,2", "seed 2 more than once"), ("1,,2", "'' is not a seed")])
def test_bad_seed_specs_name_the_flag(spec, why):
    with pytest.raises(ConfigError, match="--seeds") as err:
        parse_seeds(spec)
    assert why in str(err.value)


def test_cli_rejects_a_bad_seed_spec_before_any_work(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["train", "--recipe", "tiny", "--seeds", "2-0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "runs backwards" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["train", "--recipe", "tiny", "--seeds-parallel", "2", "--out", str(out)]) == 2
    assert "--seeds-parallel needs --seeds" in capsys.readouterr().err


def test_stats_are_mean_sample_std_min_max():
    s = stats({"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0})
    # Squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5 are exact in binary: ddof=1 gives sqrt(5/3) to the
    # last bit (the population std would be sqrt(5/4)).
    assert (s.mean, s.std, s.min, s.max, s.n) == (2.5, math.sqrt(5 / 3), 1.0, 4.0, 4)
    assert s.values == {"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0}
    assert s.mean_std() == "2.500 ± 1.291"
    one = stats({"7": 0.25})
    assert (one.mean, one.std, one.min, one.max, one.n) == (0.25, None, 0.25, 0.25, 1)
    assert one.mean_std() == "0.250"
    assert stats({"a": 0.5, "b": 0.5}).std == 0.0


def test_aggregate_keeps_metrics_missing_from_some_runs():
    out = aggregate({"0": {"acc": 0.9, "loss": 1.0}, "1": {"acc": 0.7}, "2": {"acc": 0.8, "loss": 3.0}})
    assert list(out) == ["acc", "loss"]
    assert out["acc"].n == 3 and out["acc"].min == 0.7 and out["acc"].max == 0.9
    assert out["acc"].mean == pytest.approx(0.8, rel=1e-15, abs=0)  # fsum of three doubles, then one division
    assert out["acc"].std == pytest.approx(0.1, rel=1e-14, abs=0)
    assert out["loss"].n == 2 and out["loss"].values == {"0": 1.0, "2": 3.0} and out["loss"].mean == 2.0


def test_flatten_results_names_metrics_by_task_and_labels():
    results = [
        {"task": "zeroshot", "data": "d1", "labels": "colour", "ensemble": "max", "top1": 0.5, "n": 64},
        {"task": "retrieval", "data": "d1", "t2i_R@1": 0.25, "unique_captions": 64, "ok": True, "x": float("nan")},
        {"task": "linear-probe", "data": "a", "accuracy": 0.75, "by_size": {"1": 0.5}},
        {"task": "linear-probe", "data": "b", "accuracy": 0.5},
    ]
    assert flatten_results(results) == {"zeroshot/colour/top1": 0.5, "retrieval/t2i_R@1": 0.25,
                                        "linear-probe@a/accuracy": 0.75, "linear-probe@b/accuracy": 0.5}


def test_summarize_reads_eval_json_and_names_a_run_without_one(tmp_path):
    for seed, top1 in [(0, 0.5), (1, 1.0)]:
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "eval.json").write_text(json.dumps(
            {"run": "x", "step": 5, "results": [{"task": "zeroshot", "labels": "shape", "top1": top1}]}))
    summary = summarize([tmp_path / "seed-0", tmp_path / "seed-1"])
    assert list(summary.runs) == ["seed-0", "seed-1"]
    assert summary.metrics["zeroshot/shape/top1"].values == {"seed-0": 0.5, "seed-1": 1.0}
    assert summary.metrics["zeroshot/shape/top1"].std == math.sqrt(0.125)  # (0.25^2 * 2) / 1, exact
    with pytest.raises(VlalignError, match="nowhere has no eval.json"):
        summarize({"0": tmp_path / "seed-0", "1": tmp_path / "nowhere"})


def sweep_argv(out, *extra):
    return ["train", "--recipe", "tiny", "--seeds", "0-1", "--out", str(out), "--quiet",
            "--set", "train.precision=fp32", "--set", "train.threads=1", *extra]


def test_seed_sweep_end_to_end_skips_finished_seeds_and_resumes_interrupted_ones(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_argv(out)) == 0
    captured = capsys.readouterr()
    assert "seed 0: training" in captured.err and "seed 1: training" in captured.err
    assert "zeroshot/colour/top1" in captured.out and "mean ± std" in captured.out

    evals = {}
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        assert f"  seed: {seed}\n" in (run / "config.yaml").read_text()
        assert latest_checkpoint(run / "checkpoints").name == "step-20"
        assert (run / "report.html").is_file()
        evals[seed] = flatten_results(json.loads((run / "eval.json").read_text())["results"])
    sweep = json.loads((out / "seeds.json").read_text())
    assert sweep["seeds"] == [0, 1] and sweep["runs"] == {"0": "seed-0", "1": "seed-1"}
    assert set(sweep["metrics"]) == set(evals[0])
    for name, s in sweep["metrics"].items():
        values = [evals[0][name], evals[1][name]]
        assert s["values"] == {"0": values[0], "1": values[1]} and s["n"] == 2
        assert s["min"] == min(values) and s["max"] == max(values)
        assert s["mean"] == (values[0] + values[1]) / 2  # both sums correctly rounded
        assert s["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), rel=1e-14, abs=0)
    table = (out / "seeds.md").read_text()
    colour = sweep["metrics"]["zeroshot/colour/top1"]
    assert f"| zeroshot/colour/top1 | {colour['mean']:.4f} | {colour['std']:.4f} |" in table
    page = (out / "report.html").read_text()
    assert "zeroshot/colour/top1" in page
    assert "href='seed-0/report.html'" in page and "href='seed-1/report.html'" in page

    # Rerun: both seeds finished, nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for seed in (0, 1) for p in (out / f"seed-{seed}").rglob("*") if p.is_file()}
    assert main(sweep_argv(out)) == 0
    assert "seed 0: finished, skipped" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # Both seeds interrupted after step 10 (their last checkpoint and evaluation lost): the rerun resumes them,
    # two at a time in processes of their own, and ends with the same weights.
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        shutil.move(run / "checkpoints" / "step-20", tmp_path / f"step-20-seed-{seed}")
        (run / "eval.json").unlink()
    assert main(sweep_argv(out, "--seeds-parallel", "2")) == 0
    assert "seed 1: resuming from step 10" in capsys.readouterr().err
    for seed in (0, 1):
        assert_same_checkpoint(out / f"seed-{seed}" / "checkpoints" / "step-20", tmp_path / f"step-20-seed-{seed}")
        assert json.loads((out / f"seed-{seed}" / "eval.json").read_text())["step"] == 20


def test_a_failed_job_is_named_and_no_new_job_starts_after_it():
    started = time.monotonic()
    with pytest.raises(VlalignError, match=r"seed 1 \(exit code 5\) failed"):
        run_in_processes({"seed 1": (sys.exit, (5,)), "seed 2": (time.sleep, (600,))}, workers=1)
    assert time.monotonic() - started < 300  # seed 2 never started


def test_sigterm_stops_the_running_jobs_and_starts_no_new_one():
    started = time.monotonic()
    sigterm = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    sigterm.start()
    try:
        with pytest.raises(GracefulStop):
            run_in_processes({"seed 0": (time.sleep, (60,)), "seed 1": (time.sleep, (60,))}, workers=1)
    finally:
        sigterm.cancel()
    assert time.monotonic() - started < 30  # seed 0 was stopped, seed 1 never started
