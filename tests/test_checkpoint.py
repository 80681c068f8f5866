import json

import torch

from vlalign.checkpoint import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_is_bitwise_and_pickle_free(tmp_path):
    model, opt = model_and_optimizer()
    path = save_checkpoint(tmp_path, 7, model.state_dict(), opt.state_dict(), {"train_state": {"step": 7}})
    assert sorted(p.name for p in path.iterdir()) == ["COMMITTED", "model.safetensors", "optimizer.safetensors",
                                                     "state.json"]
    tensors, restored, state = load_checkpoint(path)
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[name], value)
    assert state["train_state"] == {"step": 7} and state["step"] == 7
    for pid, entries in opt.state_dict()["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(restored["state"][pid][key]), torch.as_tensor(value))
    json.loads((path / "state.json").read_text())  # plain JSON, no pickled objects


def test_rng_state_round_trip():
    saved = json.loads(json.dumps(rng_state()))
    expected = torch.rand(3)
    set_rng_state(saved)
    assert torch.equal(torch.rand(3), expected)


def test_uncommitted_and_temp_dirs_are_never_chosen(tmp_path):
    model, opt = model_and_optimizer()
    save_checkpoint(tmp_path, 10, model.state_dict(), opt.state_dict(), {})
    torn = tmp_path / "step-20"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-step-30").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-10"


def test_keep_last_k_prunes_after_commit(tmp_path):
    model, opt = model_and_optimizer()
    for step in range(1, 11):
        save_checkpoint(tmp_path, step, model.state_dict(), opt.state_dict(), {}, keep_last_k=3)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-8", "step-9", "step-10"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
