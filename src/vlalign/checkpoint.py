"""Atomic checkpoints: tensors in safetensors, everything else in JSON, never a pickle.

Layout of ``checkpoints/step-N/``::

    model.safetensors       model weights (full, unsharded state_dict)
    optimizer.safetensors   optimizer tensors, flattened as "state/<param>/<key>"
    state.json              format version, counters, config, per-rank RNG states and data-loader
                            positions, optimizer param groups and scalars
    ema.safetensors         (only with train.ema_decay > 0) the moving average of the weights, a full state_dict
    COMMITTED               written last: a directory without it is never loaded

A save writes into ``.tmp-step-N``, fsyncs every file, writes the marker, renames the directory
into place and fsyncs the parent (the PyTorch distributed-checkpoint ``.metadata`` discipline).
Old checkpoints are pruned only after the new one is committed: each is first renamed to
``.trash-step-M`` (atomic, so a kill mid-deletion never leaves a half-deleted ``step-M`` that
looks complete) and then deleted. Leftover ``.tmp-*`` / ``.trash-*`` directories of a killed
save are removed by the next save.

Format versions: 0 is the first release (one rank; ``rng`` and ``loader`` at the top level;
optimizer tensors keyed by parameter index as ``state.<i>.<key>``); 1 keeps one ``ranks`` entry
per process and keys optimizer state by parameter name. ``load_checkpoint`` upgrades 0 to 1.
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
FORMAT_VERSION = 1
TMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
# What a training checkpoint must hold to resume bitwise (checked on load, listed in errors).
REQUIRED_KEYS = ("format_version", "step", "train_state", "config", "world_size", "ranks", "optimizer")
REQUIRED_RANK_KEYS = ("rng", "loader")
REQUIRED_RNG_KEYS = ("python", "numpy", "torch")
REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
EMA_FILE = "ema.safetensors"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


# ---------------------------------------------------------------------------------------------
# optimizer state <-> (tensors, JSON)


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state_dict (keyed by index or parameter name) -> (tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    by_name = any(isinstance(pid, str) for pid in state["state"])
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "keys": "name" if by_name else "index"}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    as_key = str if meta.get("keys") == "name" else int
    state: dict[Any, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.removeprefix("state/").rsplit("/", 1)
        state.setdefault(as_key(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.rsplit("/", 1)
        state.setdefault(as_key(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------
# RNG states as JSON


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states, JSON-able."""
    np_state = np.random.get_state()
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------
# save


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
                    meta: dict[str, Any], keep_last_k: int = 0, ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write ``root/step-{step}``; then prune to the newest ``keep_last_k`` (0 keeps all).

    A failure while writing (full disk, permissions) removes the partial directory and raises a
    ``CheckpointError`` naming the path; earlier checkpoints are never touched before the commit.
    """
    root = Path(root)
    final = root / f"step-{step}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)
        tmp = root / f"{TMP_PREFIX}step-{step}"
        tmp.mkdir()
        write_files(tmp, model_state, optimizer_state, {"format_version": FORMAT_VERSION, "step": step, **meta},
                    ema_state)
        commit(tmp, final, step)
    except OSError as err:
        shutil.rmtree(root / f"{TMP_PREFIX}step-{step}", ignore_errors=True)
        raise CheckpointError(f"Could not write checkpoint {final}: {err.strerror or err}. Earlier checkpoints "
                              "are untouched; free disk space (or fix permissions) and rerun to resume.") from err
    if keep_last_k > 0:
        prune(root, keep_last_k)
    return final


def write_files(directory: Path, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
                meta: dict[str, Any], ema_state: dict[str, torch.Tensor] | None = None) -> None:
    """Tensors and JSON into ``directory``, each file fsynced. Nothing is committed yet."""
    save_tensors(model_state, directory / "model.safetensors")
    if ema_state is not None:
        save_tensors(ema_state, directory / EMA_FILE)
    meta = dict(meta)
    if optimizer_state is not None:
        opt_tensors, meta["optimizer"] = optimizer_to_flat(optimizer_state)
        save_tensors(opt_tensors, directory / "optimizer.safetensors")
    (directory / "state.json").write_text(json.dumps(meta, indent=1))
    for f in directory.iterdir():
        _fsync_file(f)


def commit(tmp: Path, final: Path, step: int) -> None:
    """Marker last, then one atomic rename: a reader sees either no ``step-N`` or a complete one."""
    (tmp / MARKER).write_text(str(step))
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step replaces it: move the old one aside atomically first
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def prune(root: Path, keep_last_k: int) -> None:
    """Delete all but the newest ``keep_last_k`` complete checkpoints (after the newest committed)."""
    for old in complete_checkpoints(root)[:-keep_last_k]:
        _discard(old)


def _discard(path: Path) -> None:
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash)


def remove_leftovers(root: Path) -> None:
    """Remove temp and trash directories left by a save or prune that was killed."""
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(d)


# ---------------------------------------------------------------------------------------------
# discover / load


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


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    """-> (model tensors, optimizer state_dict or None, metadata upgraded to the current format).

    Refuses a directory without the commit marker, or with unreadable files.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete vlalign checkpoint (no {MARKER} marker). Point at a "
                              "checkpoints/step-N directory written by `vlalign train`, or at its run directory.")
    try:
        model = load_tensors(path / "model.safetensors")
        raw = json.loads((path / "state.json").read_text())
        meta = upgrade(raw)
        optimizer = None
        if (path / "optimizer.safetensors").is_file() and "optimizer" in meta:
            tensors = load_tensors(path / "optimizer.safetensors")
            if "format_version" not in raw:  # format 0 named them "state.<index>.<key>"
                tensors = {"state/" + k[6:].replace(".", "/", 1): v for k, v in tensors.items()}
            optimizer = optimizer_from_flat(tensors, meta["optimizer"])
    except (OSError, ValueError, KeyError) as err:  # missing file, bad JSON, corrupt safetensors header
        raise CheckpointError(f"Checkpoint {path} is damaged: {err}. Delete it to resume from the one before.") from err
    return model, optimizer, meta


def load_ema(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The moving-average weights saved with a checkpoint, or None when it has none."""
    path = Path(path) / EMA_FILE
    if not path.is_file():
        return None
    try:
        return load_tensors(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged: {err}. Delete its checkpoint to resume from the one before.") from err


def load_meta(path: str | Path) -> dict:
    """Only the JSON metadata of a committed checkpoint (upgraded), without reading any tensor."""
    path = Path(path)
    try:
        return upgrade(json.loads((path / "state.json").read_text()))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Checkpoint {path} is damaged: {err}. Delete it to resume from the one before.") from err


def upgrade(meta: dict) -> dict:
    """Bring metadata of an older format up to ``FORMAT_VERSION`` (format 0: the first release)."""
    if "format_version" in meta:
        return meta
    upgraded = {k: v for k, v in meta.items() if k not in ("rng", "loader")}
    upgraded.update(format_version=FORMAT_VERSION, world_size=1,
                    step=meta.get("train_state", {}).get("step"))
    if "rng" in meta or "loader" in meta:
        upgraded["ranks"] = [{k: meta[k] for k in ("rng", "loader") if k in meta}]
    if "optimizer" in meta:  # format 0 flattened scalars as "<index>.<key>"
        scalars = {k.replace(".", "/", 1): v for k, v in meta["optimizer"]["scalars"].items()}
        upgraded["optimizer"] = {**meta["optimizer"], "scalars": scalars, "keys": "index"}
    return upgraded


def missing_components(path: Path, meta: dict) -> list[str]:
    """Everything a training resume needs that this checkpoint lacks, as readable names."""
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    missing += [k for k in REQUIRED_KEYS if k not in meta]
    for r, entry in enumerate(meta.get("ranks") or []):
        missing += [f"ranks[{r}].{k}" for k in REQUIRED_RANK_KEYS if k not in entry]
        missing += [f"ranks[{r}].rng.{k}" for k in REQUIRED_RNG_KEYS if k not in entry.get("rng", {})]
    return missing
