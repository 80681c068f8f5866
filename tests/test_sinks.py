"""train.log_to: TensorBoard event files and an offline W&B run beside metrics.jsonl."""

import json
import shutil
import sys
import types

import pytest

from vlalign.cli import main
from vlalign.train import run_training


def _jsonl_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_tensorboard_events_match_metrics_jsonl_after_a_resume(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'vlalign[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_cfg.train.log_to = ["tensorboard"]
    run_dir = tmp_path / "run"
    run_training(tiny_cfg, run_dir, progress=False)  # 6 steps, checkpoints at 3 and 6
    shutil.rmtree(run_dir / "checkpoints" / "step-6")  # as if killed after logging step 6: resume from 3
    run_training(tiny_cfg, run_dir, progress=False)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("loss")}
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]  # steps 4-6 of the first try purged
    assert losses == pytest.approx(_jsonl_losses(run_dir), rel=1e-6)
    assert "pairs_per_s" in events.Tags()["scalars"] and "precision" not in events.Tags()["scalars"]


def test_a_missing_sink_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    for sink in ("tensorboard", "wandb"):
        code = main(["train", "--recipe", "tiny", "--out", str(tmp_path / sink), "--quiet", "--set", "train.steps=1",
                     "--set", f"train.log_to=[{sink}]"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"pip install 'vlalign[{sink}]'" in err
    assert main(["train", "--recipe", "tiny", "--set", "train.log_to=[mlflow]"]) == 2
    assert "not one of: tensorboard, wandb" in capsys.readouterr().err


def test_wandb_logs_offline_into_the_run_directory(tiny_cfg, tmp_path, monkeypatch):
    calls = {"log": []}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))  # no W&B server is reachable here
    tiny_cfg.train.log_to = ["wandb"]
    run_training(tiny_cfg, tmp_path / "run", progress=False)
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path / "run")
    assert calls["init"]["config"]["train"]["log_to"] == ["wandb"] and calls["finished"]
    assert {step: values["loss"] for step, values in calls["log"]} == _jsonl_losses(tmp_path / "run")
    assert all(isinstance(v, float) for _, values in calls["log"] for v in values.values())
