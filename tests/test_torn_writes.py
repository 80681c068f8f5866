"""Torn writes (RELIABILITY.md test 2): a kill or an error at any phase of a save never leaves a
checkpoint that would be chosen; a full disk leaves the previous checkpoint byte-identical.

``Killed`` stands for SIGKILL: it is a BaseException, so the save's ``except OSError`` cleanup does
not run, and whatever was on disk at that moment stays there, as after a real kill.
"""

import errno
import hashlib
import shutil

import pytest
import torch
from reliability_helpers import train_argv
from safetensors.torch import save

import vlalign.checkpoint as ckpt
from vlalign.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from vlalign.cli import main


class Killed(BaseException):
    pass


def state_at(step: int) -> tuple[dict, dict]:
    """Model and optimizer state whose values identify the step they were saved at."""
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model.state_dict(), opt.state_dict()


def save_step(root, step: int, keep_last_k: int = 0):
    return save_checkpoint(root, step, *state_at(step), {"train_state": {"step": step}}, keep_last_k)


def assert_resumes_from(root, step: int) -> None:
    """The newest complete checkpoint is ``step``, it loads, and it holds that step's tensors."""
    chosen = latest_checkpoint(root)
    assert chosen is not None and chosen.name == f"step-{step}"
    for path in complete_checkpoints(root):  # everything that could ever be chosen loads
        tensors, _, meta = load_checkpoint(path)
        expected, _ = state_at(meta["step"])
        assert all(torch.equal(tensors[k], v) for k, v in expected.items())


def leftovers(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def kill_mid_tensor_write(monkeypatch):
    def half_written(tensors, path, metadata=None):
        data = save(tensors, metadata=metadata)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise Killed

    monkeypatch.setattr(ckpt, "save_file", half_written)


def kill_before_marker(monkeypatch):
    monkeypatch.setattr(ckpt, "commit", lambda *args: (_ for _ in ()).throw(Killed()))


def kill_after_marker_before_rename(monkeypatch):
    def fsync_then_die(path):  # the first directory fsync in commit() comes right after the marker
        raise Killed

    monkeypatch.setattr(ckpt, "_fsync_dir", fsync_then_die)


def kill_after_commit_before_prune(monkeypatch):
    monkeypatch.setattr(ckpt, "prune", lambda *args: (_ for _ in ()).throw(Killed()))


def kill_during_deletion_of_an_old_one(monkeypatch):
    real_rmtree = shutil.rmtree

    def delete_one_file_then_die(path, *args, **kwargs):
        if ".trash-" not in str(path) or not path.exists():
            return real_rmtree(path, *args, **kwargs)
        next(p for p in sorted(path.iterdir()) if p.name != ckpt.MARKER).unlink()
        raise Killed

    monkeypatch.setattr(ckpt.shutil, "rmtree", delete_one_file_then_die)


@pytest.mark.parametrize("fault, newest_complete", [
    (kill_mid_tensor_write, 20),
    (kill_before_marker, 20),
    (kill_after_marker_before_rename, 20),
    (kill_after_commit_before_prune, 30),
    (kill_during_deletion_of_an_old_one, 30),
])
def test_a_kill_at_any_phase_of_a_save_never_exposes_a_torn_checkpoint(tmp_path, monkeypatch, fault, newest_complete):
    for step in (10, 20):
        save_step(tmp_path, step, keep_last_k=2)
    with monkeypatch.context() as patch:
        fault(patch)
        with pytest.raises(Killed):
            save_step(tmp_path, 30, keep_last_k=2)
    assert_resumes_from(tmp_path, newest_complete)
    assert {p.name for p in complete_checkpoints(tmp_path)} >= {"step-20"}

    save_step(tmp_path, 40, keep_last_k=2)  # the next save cleans up after the killed one
    assert [p.name for p in complete_checkpoints(tmp_path)] == [f"step-{newest_complete}", "step-40"]
    assert leftovers(tmp_path) == []
    assert_resumes_from(tmp_path, 40)


def test_keep_last_k_after_ten_saves_leaves_three_complete_and_no_temp_dirs(tmp_path):
    for step in range(1, 11):
        save_step(tmp_path, step, keep_last_k=3)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("step-")] == []
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-8", "step-9", "step-10"]
    assert_resumes_from(tmp_path, 10)


def sha256_tree(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_a_full_disk_keeps_the_previous_checkpoint_and_exits_nonzero_naming_the_path(reference_run, tmp_path,
                                                                                     monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    previous = out / "checkpoints" / "step-20"
    before = sha256_tree(previous)
    real_save_file = ckpt.save_file

    def disk_fills_up(tensors, path, metadata=None):
        real_save_file(tensors, path, metadata=metadata)
        if path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    argv = train_argv(out)
    argv[argv.index("train.steps=20")] = "train.steps=22"  # two more steps, then a save that fails
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert str(out / "checkpoints" / "step-22") in err and "No space left on device" in err
    assert "Traceback" not in err
    assert sha256_tree(previous) == before
    assert latest_checkpoint(out / "checkpoints") == previous and leftovers(out / "checkpoints") == []
