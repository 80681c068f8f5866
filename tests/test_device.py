"""Device plumbing, checked on a CPU-only machine: how ``train.device`` resolves, that batches move whole,
that a run with ``train.device=cpu`` keeps every tensor there, and that nothing in ``src/`` pins work to the
CPU behind the setting's back."""

import re
from pathlib import Path

import pytest
import torch

from vlalign.api import load
from vlalign.device import resolve_device, to_device
from vlalign.errors import ConfigError
from vlalign.train import run_training

SRC = Path(__file__).resolve().parent.parent / "src" / "vlalign"
# Where naming the CPU is the point, and why.
HOST_ALLOWED = {
    "device.py": "resolves the setting itself",
    "checkpoint.py": "checkpoint files are written from host memory",
    "pretrained.py": "torch.load of a state dict file maps it to the host before conversion",
    "train/setup.py": "SALT's teacher runs in the data workers, which cannot use CUDA after fork",
    "api.py": "int8 kernels run on the CPU: the error message names it",
    "data/images.py": "a user's image given as a tensor becomes a numpy array, which lives in host memory",
    "export.py": "exported files (weights, traced towers) are written from host memory",
}
HOST_PATTERN = re.compile(r"\.cpu\(\)|device=[\"']cpu[\"']|torch\.device\([\"']cpu[\"']\)|map_location=[\"']cpu[\"']")


def test_nothing_pins_work_to_the_cpu_outside_the_allowed_places():
    found = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if HOST_PATTERN.search(p.read_text())}
    assert found <= set(HOST_ALLOWED), f"CPU named outside the allowed places: {sorted(found - set(HOST_ALLOWED))}"


def test_auto_is_cuda_only_where_there_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # torchrun's rank 1 (process_group sets it)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="has 2 CUDA devices"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_a_batch_moves_whole():
    batch = {"images": torch.zeros(2, 3, 4, 4), "extra_texts": {"clauses": torch.zeros(2, 3, 5, dtype=torch.long)},
             "captions": ["a", "b"], "images_missing": None}
    moved = to_device(batch, torch.device("meta"))  # a device every build has
    assert moved["images"].is_meta and moved["extra_texts"]["clauses"].is_meta
    assert moved["captions"] == ["a", "b"] and moved["images_missing"] is None


def test_a_cpu_run_keeps_every_tensor_on_the_configured_device(tiny_cfg, tmp_path, monkeypatch):
    import vlalign.train.trainer as trainer

    tiny_cfg.train.device, tiny_cfg.train.steps = "cpu", 2
    tiny_cfg.data.train = "shapes:n=64,seed=0"
    moves, seen = [], []
    monkeypatch.setattr(trainer, "to_device", lambda batch, device: moves.append(device) or to_device(batch, device))
    original = trainer.build_components

    def watched(*args, **kwargs):
        parts = original(*args, **kwargs)
        parts.model.register_forward_pre_hook(lambda module, inputs: seen.extend(
            t.device for t in inputs if torch.is_tensor(t)))
        return parts

    monkeypatch.setattr(trainer, "build_components", watched)
    run_training(tiny_cfg, tmp_path / "run", progress=False)
    assert moves and set(moves) == {torch.device("cpu")}  # every batch went through the move
    assert seen and set(seen) == {torch.device("cpu")}
    run = load(tmp_path / "run", device="cpu")
    assert {p.device for p in run.model.parameters()} == {torch.device("cpu")}


def test_load_follows_the_device_argument(trained_tiny_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        load(trained_tiny_run, device="cuda")
    aligner = load(trained_tiny_run)  # the run's train.device, auto: the CPU here
    assert aligner.device == torch.device("cpu")
    assert aligner.encode_text(["a red circle"]).device == torch.device("cpu")


def test_gpu_check_says_why_it_stops_without_cuda():
    import subprocess
    import sys

    script = SRC.parent.parent / "benchmarks" / "gpu_check.py"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_check would measure it")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(SRC.parent)})
    assert done.returncode == 2 and "sees no CUDA device" in done.stderr
