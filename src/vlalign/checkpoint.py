"""Atomic checkpoints: tensors in safetensors, everything else in JSON, never a pickle.

Layout of ``checkpoints/step-N/``::

    model.safetensors       model weights (the unwrapped module's state_dict)
    optimizer.safetensors   optimizer tensors, flattened as "state.<param>.<key>"
    state.json              step counters, scheduler, RNG states, data-loader position, optimizer scalars
    COMMITTED               written last: a directory without it is never loaded

A save writes into ``.tmp-step-N``, fsyncs every file, writes the marker, renames the directory
into place and fsyncs the parent (the PyTorch distributed-checkpoint ``.metadata`` discipline).
Old checkpoints are pruned only after the new one is committed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlalign.errors import CheckpointError

MARKER = "COMMITTED"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses tensors that share memory (a codebook used by two heads, tied embeddings):
    store each storage once and record the other names as aliases in the file's metadata."""
    unique, aliases, seen = {}, {}, {}
    for name, t in tensors.items():
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t
    save_file(_contiguous(unique), path, metadata={"aliases": json.dumps(aliases)})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


# ---------------------------------------------------------------------------------------------
# optimizer state <-> (tensors, JSON)


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------
# RNG states as JSON


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------
# save / load / discover


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], keep_last_k: int = 0) -> Path:
    """Atomically write ``root/step-{step}``; then prune to the newest ``keep_last_k`` (0 keeps all)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_tensors(model.state_dict(), tmp / "model.safetensors")
        meta = dict(state)
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
            save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            meta["optimizer"] = opt_meta
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            _fsync_file(f)
        (tmp / MARKER).write_text(str(step))
        _fsync_file(tmp / MARKER)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (e.g. the final one) replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"Could not write checkpoint {final}: {err.strerror or err}. "
                              "Earlier checkpoints are untouched; free disk space and rerun to resume.") from err
    if keep_last_k > 0:
        for old in complete_checkpoints(root)[:-keep_last_k]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Committed ``step-N`` directories under ``root``, oldest first. Temp and torn ones are ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and d.name[5:].isdigit() and (d / MARKER).is_file():
            found.append((int(d.name[5:]), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """-> (model tensors, optimizer tensors or None, state JSON). Refuses an uncommitted directory."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete vlalign checkpoint (no {MARKER} marker).")
    model = load_tensors(path / "model.safetensors")
    opt = load_tensors(path / "optimizer.safetensors") if (path / "optimizer.safetensors").is_file() else None
    state = json.loads((path / "state.json").read_text())
    return model, opt, state
