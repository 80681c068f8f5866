import json
import subprocess
import sys

import pytest

from vlalign.cli import main


def test_train_eval_smoke_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--quiet", "--set", "train.steps=6",
                 "--set", "train.checkpoint_every=3"]) == 0
    for name in ("config.yaml", "tokenizer.json", "preprocess.json", "metrics.jsonl", "eval.json", "report.html"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3", "step-6"]
    results = json.loads((out / "eval.json").read_text())["results"]
    assert {r["task"] for r in results} == {"zeroshot", "retrieval", "compositional"}
    assert all(0.0 <= r.get("top1", r.get("t2i_R@1", 0)) <= 1.0 for r in results)
    assert "data:image/png;base64" in (out / "report.html").read_text()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6]

    # Rerunning the finished run does no step and logs nothing twice.
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--quiet", "--no-eval", "--set", "train.steps=6",
                 "--set", "train.checkpoint_every=3"]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == steps

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--task", "retrieval"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in printed] == ["retrieval"] and printed[0]["n"] == 64


@pytest.mark.parametrize("argv, message", [
    (["train", "--recipe", "nope"], "Unknown recipe 'nope'"),
    (["train", "--set", "optim.lrr=1"], "Unknown config key 'optim.lrr'"),
    (["train", "--set", "data.train=nowhere:x"], "Unknown data source 'nowhere'"),
    (["eval", "--checkpoint", "/nonexistent/run"], "not a vlalign run directory"),
])
def test_bad_input_is_one_clear_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else []))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_help_and_recipes_run_as_a_program():
    done = subprocess.run([sys.executable, "-m", "vlalign", "recipes"], capture_output=True, text=True, check=True)
    assert "shapes-clip" in done.stdout and "(default)" in done.stdout
    helped = subprocess.run([sys.executable, "-m", "vlalign", "train", "--help"], capture_output=True, text=True)
    assert "--recipe" in helped.stdout and "--set" in helped.stdout
