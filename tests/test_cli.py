import json
import re
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


def test_recipe_and_config_combine_and_config_show_prints_the_resolved_config(tmp_path, capsys):
    import yaml

    from vlalign.recipes import get_recipe

    config = tmp_path / "mine.yaml"
    config.write_text("recipe: shapes-siglip\ntrain:\n  steps: 7\n")
    assert main(["config", "show", "--config", str(config), "--set", "optim.lr=0.5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = get_recipe("shapes-siglip")
    assert shown["name"] == "shapes-siglip" and shown["objective"]["name"] == "siglip"
    assert shown["train"]["steps"] == 7 and shown["optim"]["lr"] == 0.5
    assert shown["data"] == yaml.safe_load(yaml.safe_dump(expected.data.__dict__))  # the rest is the recipe's

    config.write_text("train:\n  steps: 7\n")  # no recipe named: --recipe chooses it
    assert main(["config", "show", "--recipe", "tiny", "--config", str(config)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "tiny" and shown["train"]["steps"] == 7 and shown["data"]["image_size"] == 32

    config.write_text("recipe: shapes-siglip\n")
    assert main(["config", "show", "--recipe", "tiny", "--config", str(config)]) == 2
    assert "disagree" in capsys.readouterr().err


def test_eval_help_lists_every_registered_task(capsys):
    from vlalign.eval import TASKS

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    helped = capsys.readouterr().out
    listed = set(re.findall(r"[a-z0-9-]+", helped.split("\ntasks: ", 1)[1]))
    assert len(TASKS) >= 22 and set(TASKS) <= listed, set(TASKS) - listed


def test_recipes_wraps_descriptions_instead_of_cutting_them(monkeypatch, capsys):
    from vlalign.recipes import RECIPES, describe

    monkeypatch.setenv("COLUMNS", "90")  # the terminal width shutil.get_terminal_size reports
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 90
    text = " ".join(" ".join(lines).split())
    assert "model.init_modules=[text] (same model.text.* and context length)." in describe("text-mlm")
    for name in RECIPES:
        assert f"{name} {describe(name)}" in text, name


def test_debug_works_after_the_subcommand_too(tmp_path):
    from vlalign.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["train", "--set", "optim.lrr=1", "--out", str(tmp_path / "r"), "--debug"])
    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["--debug", "train", "--set", "optim.lrr=1", "--out", str(tmp_path / "r")])


def test_a_failed_evaluation_after_training_warns_and_exits_0(tmp_path, capsys):
    (tmp_path / "moved.csv").write_text("image,caption\nmoved-away.png,a red picture\n")
    out = tmp_path / "run"
    code = main(["train", "--recipe", "tiny", "--out", str(out), "--quiet", "--set", "train.steps=1",
                 "--set", "eval.tasks=[retrieval]", "--set", f"data.eval=csv:{tmp_path / 'moved.csv'}"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: the evaluation after training stopped" in err and "can be read" in err
    assert (out / "checkpoints" / "step-1").is_dir()
