"""Multi-process training: the process group, the ``--nproc`` launcher, and data-parallel strategies.

``vlalign train --nproc N ...`` starts N copies of the same command with the environment torchrun
sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so
``torchrun --nproc_per_node=N -m vlalign train ...`` and ``--nproc N`` run the same code.
``process_group()`` joins the group those variables describe: gloo for CPU tensors, nccl for CUDA ones.

Strategies (``train.parallel``):

- ``replicate`` (default): every rank holds all weights; after backward the gradients are
  averaged with one coalesced all-reduce. We keep this explicit all-reduce instead of
  ``DistributedDataParallel`` because (1) GradCache accumulation (``train.accum_steps``) runs one
  backward per micro-batch plus one for the loss on cached features, and DDP would all-reduce on
  every one of them unless each is wrapped in ``no_sync``; (2) the logit scale and bias receive
  their gradient from that loss, outside any DDP forward, which DDP's reducer treats as unused
  parameters (an error, or ``find_unused_parameters`` and a graph walk per step); (3) the result is
  the same arithmetic as one process with the global batch, which the equivalence tests check. What
  DDP adds, overlapping bucketed all-reduces with backward, pays off for large towers on GPUs,
  where ``fsdp`` is the option to use.
- ``fsdp``: FSDP2 ``fully_shard`` on every block of every ``ModuleList`` and on the root;
  parameters, gradients and optimizer state are sharded across ranks (works on CPU/gloo too).
  Scalar parameters (logit scale and bias) cannot be sharded: they stay replicated and their
  gradients are all-reduced like ``replicate``'s. Checkpoints hold the full (unsharded) state, so a
  run saved with one strategy resumes with the other.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as tdist
from torch import nn

from vlalign import dist
from vlalign.errors import CheckpointError, VlalignError

log = logging.getLogger(__name__)

LAUNCH_GRACE_S = 30.0  # after one worker fails, how long the others get to stop on their own
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------------------------
# process group


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


@contextmanager
def process_group() -> Iterator[None]:
    """Join the process group described by the torchrun environment (a no-op for one process)."""
    if env_world_size() <= 1 or tdist.is_initialized():
        yield
        return
    rank, world = int(os.environ.get("RANK", "0")), env_world_size()
    backend = "gloo"
    if torch.cuda.is_available():  # collectives go to gloo for CPU tensors, nccl for CUDA ones
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        tdist.init_process_group(backend)
    except (RuntimeError, ValueError) as err:  # DistNetworkError (port in use, unreachable) is a RuntimeError
        raise VlalignError(
            f"Rank {rank} of {world} could not join the process group at {address}: {err}. If the port is in "
            "use, set MASTER_PORT to a free one (`vlalign train --nproc N` picks a free port itself).") from None
    configure_logging(rank)
    try:
        yield
    finally:
        tdist.destroy_process_group()


def configure_logging(rank: int) -> None:
    """Rank 0 logs as usual; other ranks only errors, each line tagged with its rank."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s"))
    if rank != 0:
        root.setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------
# launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise VlalignError(f"MASTER_PORT={port} is in use on this machine. Unset MASTER_PORT (a free port is "
                               "then chosen) or set it to a free port.") from None


def launch(argv: list[str], nproc: int) -> int:
    """Run ``vlalign <argv>`` as ``nproc`` ranks on this machine; return the run's exit code.

    SIGTERM/SIGINT to the launcher are forwarded to every rank (each stops at the same step and
    saves). When a rank fails, the others get ``LAUNCH_GRACE_S`` to stop on their own and are then
    killed, so a failure on one rank never leaves the rest waiting in a collective.
    """
    if nproc < 1:
        raise VlalignError(f"--nproc must be at least 1, got {nproc}.")
    if "MASTER_PORT" in os.environ:
        if not os.environ["MASTER_PORT"].isdigit():
            raise VlalignError(f"MASTER_PORT={os.environ['MASTER_PORT']!r} is not a port number. Unset it (a free "
                               "port is then chosen) or set it to a free port.")
        port = int(os.environ["MASTER_PORT"])
        check_port_free(port)
    else:
        port = free_port()
    workers = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        workers.append(subprocess.Popen([sys.executable, "-m", "vlalign", *argv], env=env))

    def forward(signum, frame):
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(workers)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(workers: list[subprocess.Popen]) -> int:
    first_failure, deadline = None, None
    while any(w.poll() is None for w in workers):
        for rank, w in enumerate(workers):
            code = w.poll()
            if code not in (None, 0) and first_failure is None:
                first_failure, deadline = _exit_code(code), time.monotonic() + LAUNCH_GRACE_S
                log.warning("rank %d exited with code %d", rank, first_failure)
        if deadline is not None and time.monotonic() > deadline:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        time.sleep(0.1)
    codes = [_exit_code(w.returncode) for w in workers]
    return first_failure if first_failure is not None else max(codes)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal s -> 128 + s, as a shell


# ---------------------------------------------------------------------------------------------
# data-parallel strategies


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over ranks in place with one flattened all-reduce."""
    if dist.world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    tdist.all_reduce(flat)
    flat /= dist.world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


class Replicate:
    """Every rank holds all weights; gradients are averaged with one all-reduce after backward."""

    name = "replicate"

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def reduce_gradients(self, model: nn.Module) -> None:
        all_reduce_mean_([p.grad for p in model.parameters() if p.grad is not None])

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        return by_name(model, optimizer, optimizer.state_dict())

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict,
             where: str) -> None:
        _check_keys(model_state, self.model_state(model), where)
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(by_index(model, optimizer, optimizer_state))
        except (RuntimeError, ValueError, KeyError) as err:  # shape or parameter-group mismatches
            raise CheckpointError(f"Checkpoint {where} does not fit the model or optimizer: {err}") from None


class FullyShard(Replicate):
    """FSDP2: parameters, gradients and optimizer state sharded over ranks (see the module docstring)."""

    name = "fsdp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(next(model.parameters()).device.type, (dist.world_size(),))
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        scalars = {p for p in model.parameters() if p.ndim == 0}
        fully_shard(model, mesh=mesh, ignored_params=scalars)
        # The output dataclass holds views (e.g. patch tokens of the final norm); nothing writes to them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        self.replicated = [p for p in model.parameters() if p.ndim == 0]
        return model

    def reduce_gradients(self, model: nn.Module) -> None:
        # Sharded gradients were reduce-scattered (averaged) in backward; only the scalars remain.
        all_reduce_mean_([p.grad for p in self.replicated if p.grad is not None])

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load(self, model, optimizer, model_state: dict, optimizer_state: dict, where: str) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.tensor import distribute_tensor

        _check_keys(model_state, model.state_dict(), where)
        set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
        # Shard each full optimizer tensor like its parameter. (DCP's set_optimizer_state_dict would
        # first run a fake step that creates state for parameters that never had a gradient, e.g.
        # CLIP's unused logit bias, so a resumed run's optimizer state would differ from the original.)
        params = dict(model.named_parameters())
        state = by_name(model, optimizer, optimizer_state)
        sharded = {}
        for name, entries in state["state"].items():
            p = params[name]
            sharded[name] = {k: distribute_tensor(v, p.device_mesh, p.placements)
                             if hasattr(p, "device_mesh") and torch.is_tensor(v) and v.shape == p.shape else v
                             for k, v in entries.items()}
        try:
            optimizer.load_state_dict(by_index(model, optimizer, {**state, "state": sharded}))
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"Checkpoint {where} does not fit the optimizer: {err}") from None


STRATEGIES = {"replicate": Replicate, "fsdp": FullyShard}


def build_strategy(name: str) -> Replicate:
    return STRATEGIES[name]()


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own (index) order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An optimizer state_dict keyed by parameter index (torch's own; checkpoint format 0) -> keyed by name.

    Checkpoints key by name, so they do not depend on the order parameters were grouped in.
    """
    if all(isinstance(p, str) for g in state["param_groups"] for p in g["params"]):
        return state
    order = _param_names(model, optimizer)
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}


def by_index(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """The inverse of ``by_name``: what ``optimizer.load_state_dict`` takes."""
    state = by_name(model, optimizer, state)
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _check_keys(saved: dict, expected: dict, where: str) -> None:
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {where} does not match the model: missing {missing[:8] or 'nothing'}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8] or 'nothing'}"
            f"{' ...' if len(unexpected) > 8 else ''}. It was written for a different architecture.")
