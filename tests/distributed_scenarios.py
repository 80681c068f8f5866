"""Two-rank (gloo) scenarios, run once per test session in two spawned processes.

Starting processes costs far more than the scenarios themselves on a busy CPU, so one spawn runs
them all and writes results under ``out``; ``test_distributed.py`` compares them with
single-process references. Each scenario is a function of (rank, out).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from reliability_helpers import RUN
from safetensors.torch import save_file

from vlalign import dist
from vlalign.config import ModelConfig, ObjectiveConfig, apply_overrides
from vlalign.errors import NonFiniteError
from vlalign.models import build_model
from vlalign.objectives import OBJECTIVES, build_objective
from vlalign.recipes import get_recipe
from vlalign.train.distributed import FullyShard, Replicate, process_group
from vlalign.train.optim import build_optimizer
from vlalign.train.step import TrainState, forward_backward, train_step
from vlalign.train.trainer import run_training

GLOBAL_BATCH, IMAGE, CONTEXT, VOCAB = 64, 32, 16, 300


def micro_model(seed: int = 0) -> torch.nn.Module:
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 32
    torch.manual_seed(seed)
    return build_model(cfg, IMAGE, VOCAB, CONTEXT)


def random_captions(g: torch.Generator, size: int) -> torch.Tensor:
    """[size, CONTEXT] token ids of random lengths, 0-padded."""
    ids = torch.randint(1, VOCAB, (size, CONTEXT), generator=g)
    lengths = torch.randint(3, CONTEXT + 1, (size,), generator=g)
    ids[torch.arange(CONTEXT)[None, :] >= lengths[:, None]] = 0
    return ids


def global_batch(seed: int = 0, size: int = GLOBAL_BATCH, negatives: bool = False, paraphrases: bool = False) -> dict:
    """Random images and captions of random lengths, the same on every rank; with ``negatives`` also
    hard-negative captions, about a quarter of them invalid, and likewise with ``paraphrases`` positive ones."""
    g = torch.Generator().manual_seed(seed)
    ids = random_captions(g, size)
    batch = {"images": torch.randn(size, 3, IMAGE, IMAGE, generator=g), "text_ids": ids, "text_mask": ids != 0,
             "channel_ids": torch.arange(3).expand(size, -1)}
    if negatives:
        negative_ids = random_captions(g, size)
        batch |= {"negative_ids": negative_ids, "negative_mask": negative_ids != 0,
                  "negative_valid": torch.rand(size, generator=g) > 0.25}
    if paraphrases:
        paraphrase_ids = random_captions(g, size)
        batch |= {"paraphrase_ids": paraphrase_ids, "paraphrase_mask": paraphrase_ids != 0,
                  "paraphrase_valid": torch.rand(size, generator=g) > 0.25}
    return batch


def scenario_batch(name: str) -> dict:
    """The global batch of an equivalence scenario: "clip", "clip+negatives", "clip+negatives+paraphrases", ..."""
    return global_batch(negatives="+negatives" in name, paraphrases="+paraphrases" in name)


def local_part(batch: dict, rank: int, world: int) -> dict:
    n = batch["images"].shape[0] // world
    return {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for name, p in model.named_parameters() if p.grad is not None}


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for name, p in model.named_parameters()}


def train_cfg():
    cfg = get_recipe("tiny")
    cfg.optim.warmup_steps, cfg.train.steps = 1, 10
    return cfg


# ---------------------------------------------------------------------------------------------
# scenarios


def equivalence(rank: int, world: int, out: Path) -> None:
    """Loss and gradients of one global batch of 64, split over ranks (and micro-batches); then 3 steps."""
    for name in ("clip", "siglip", "clip+negatives", "siglip+negatives", "clip+negatives+paraphrases"):
        batch = local_part(scenario_batch(name), rank, world)
        objective = build_objective(ObjectiveConfig(name=name.split("+")[0]))
        for label, strategy, accum in (("2x32", Replicate(), 1), ("2x16x2", Replicate(), 2), ("fsdp2x32", FullyShard(), 1)):
            model = strategy.wrap(micro_model())
            loss, _ = forward_backward(model, objective, batch, accum)
            strategy.reduce_gradients(model)
            result = {f"grad/{k}": v for k, v in gradients(model).items()} | {"loss": loss.reshape(1)}
            if rank == 0:
                save_file(result, out / f"{name}_{label}.safetensors")
    for name in ("clip", "siglip"):
        objective = build_objective(ObjectiveConfig(name=name))
        for label, strategy in (("replicate", Replicate()), ("fsdp", FullyShard())):
            model = strategy.wrap(micro_model())
            optimizer, state, cfg = build_optimizer(model, train_cfg().optim), TrainState(), train_cfg()
            cfg.objective.name = name
            for step in range(3):
                train_step(model, objective, optimizer, local_part(global_batch(seed=step), rank, world), state, cfg,
                           strategy)
            trained = parameters(model)  # a collective under FSDP: every rank gathers
            if rank == 0:
                save_file(trained, out / f"{name}_{label}_3steps.safetensors")


def poisoned(objective, rank_to_poison: int, calls_to_poison: set[int], value: float):
    """The objective, with its loss multiplied by ``value`` on one rank at the given (1-based) calls."""
    calls = {"n": 0}

    def wrapped(output, batch):
        calls["n"] += 1
        loss, metrics = objective(output, batch)
        if dist.rank() == rank_to_poison and calls["n"] in calls_to_poison:
            loss = loss * value
        return loss, metrics

    return wrapped


def nonfinite_guard(rank: int, world: int, out: Path) -> None:
    """NaN/Inf at step 3 on rank 1: both ranks raise naming step 3 and nothing changed since step 2."""
    report = {}
    for value in (float("nan"), float("inf")):
        strategy, cfg = Replicate(), train_cfg()
        model = micro_model()
        optimizer, state = build_optimizer(model, cfg.optim), TrainState()
        objective = poisoned(build_objective(cfg.objective), 1, {3}, value)
        for step in range(2):
            train_step(model, objective, optimizer, local_part(global_batch(seed=step), rank, world), state, cfg, strategy)
        before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), copy.deepcopy(state))
        try:
            train_step(model, objective, optimizer, local_part(global_batch(seed=2), rank, world), state, cfg, strategy)
            message = None
        except NonFiniteError as err:
            message = str(err)
        report[f"error/{value}"] = message
        report[f"unchanged/{value}"] = same_state(before, (model.state_dict(), optimizer.state_dict(), state))

    # skip policy: one bad step is skipped and counted; 4 in a row abort (max_consecutive_nonfinite=3)
    cfg = train_cfg()
    cfg.train.nonfinite_policy, cfg.train.max_consecutive_nonfinite = "skip", 3
    strategy, model = Replicate(), micro_model()
    optimizer, state = build_optimizer(model, cfg.optim), TrainState()
    objective = poisoned(build_objective(cfg.objective), 1, {2, 4, 5, 6, 7}, float("nan"))
    batches = (local_part(global_batch(seed=s), rank, world) for s in range(100))
    train_step(model, objective, optimizer, next(batches), state, cfg, strategy)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    skipped = train_step(model, objective, optimizer, next(batches), state, cfg, strategy)
    report["skip/returned"] = skipped
    report["skip/unchanged"] = same_state(before, (model.state_dict(), optimizer.state_dict()))
    report["skip/counters"] = [state.step, state.skipped_steps]
    train_step(model, objective, optimizer, next(batches), state, cfg, strategy)  # call 3: clean
    report["skip/after_clean"] = [state.step, state.skipped_steps, state.consecutive_nonfinite]
    try:
        for _ in range(4):
            train_step(model, objective, optimizer, next(batches), state, cfg, strategy)
        report["skip/abort"] = None
    except NonFiniteError as err:
        report["skip/abort"] = str(err)
    report["skip/final_counters"] = [state.step, state.skipped_steps, state.consecutive_nonfinite]
    (out / f"nonfinite_rank{rank}.json").write_text(json.dumps(report))


def same_state(a, b) -> bool:
    def flat(x, prefix=""):
        if isinstance(x, dict):
            return {k2: v2 for k, v in x.items() for k2, v2 in flat(v, f"{prefix}{k}/").items()}
        if isinstance(x, (list, tuple)):
            return {k2: v2 for i, v in enumerate(x) for k2, v2 in flat(v, f"{prefix}{i}/").items()}
        if isinstance(x, TrainState):
            return flat(vars(x), prefix)
        return {prefix: x}

    fa, fb = flat(list(a)), flat(list(b))
    return fa.keys() == fb.keys() and all(
        torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k] for k in fa)


def nonfinite_run(rank: int, world: int, out: Path) -> None:
    """The whole trainer: NaN in the loss at step 3 on rank 1, a checkpoint every step."""
    factory = OBJECTIVES["clip"]
    OBJECTIVES["clip"] = lambda cfg: poisoned(factory(cfg), 1, {3}, float("nan"))
    try:
        cfg = apply_overrides(get_recipe("tiny"), RUN + ["train.checkpoint_every=1"])
        run_training(cfg, out / "nonfinite_run", progress=False)
        message = None
    except NonFiniteError as err:
        message = str(err)
    finally:
        OBJECTIVES["clip"] = factory
    (out / f"nonfinite_run_rank{rank}.json").write_text(json.dumps({"error": message}))


class Crash(Exception):
    pass


def fsdp_resume(rank: int, world: int, out: Path) -> None:
    """FSDP2 through the trainer: a run that crashes after its step-3 checkpoint and is rerun ends
    bitwise equal to one that was not interrupted."""
    overrides = RUN + ["train.parallel=fsdp", "train.steps=6", "train.checkpoint_every=3",
                       "train.ema_decay=0.9"]  # the EMA is sharded like the weights, and gathered to save
    cfg = apply_overrides(get_recipe("tiny"), overrides)
    run_training(cfg, out / "fsdp_whole", progress=False)
    factory = OBJECTIVES["clip"]

    def crash_at_4th_call(objective_cfg):
        objective, calls = factory(objective_cfg), {"n": 0}

        def wrapped(output, batch):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Crash
            return objective(output, batch)

        return wrapped

    OBJECTIVES["clip"] = crash_at_4th_call
    try:
        run_training(cfg, out / "fsdp_resumed", progress=False)
    except Crash:
        pass
    finally:
        OBJECTIVES["clip"] = factory
    run_training(cfg, out / "fsdp_resumed", progress=False)


def reference_run(rank: int, world: int, out: Path) -> None:
    """The uninterrupted 2-rank reference for the SIGTERM test (which runs the CLI)."""
    run_training(apply_overrides(get_recipe("tiny"), RUN), out / "reference2", progress=False)


# Catalogue objectives (issue 11): FILIP gathers token sets, UniCL labels and text types (through a prefix).
CATALOGUE = {"filip": {"head": "tokens"}, "unicl": {"prefix_tokens": 1}}


def catalogue_model(name: str) -> torch.nn.Module:
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 32
    cfg.head = CATALOGUE[name].get("head", "projection")
    cfg.text.prefix_tokens = CATALOGUE[name].get("prefix_tokens", 0)
    torch.manual_seed(0)
    return build_model(cfg, IMAGE, VOCAB, CONTEXT)


def catalogue_batch(seed: int = 0) -> dict:
    """``global_batch`` with class labels and text types: a third are labelled samples of 4 classes."""
    g = torch.Generator().manual_seed(seed + 100)
    return global_batch(seed) | {"labels": torch.randint(0, 4, (GLOBAL_BATCH,), generator=g),
                                 "text_types": (torch.rand(GLOBAL_BATCH, generator=g) < 1 / 3).long()}


def catalogue_splits(name: str) -> tuple:
    """(label, strategy, accum) variants; FILIP's loss reads tokens, so GradCache does not apply to it."""
    variants = (("2x32", Replicate(), 1), ("fsdp2x32", FullyShard(), 1))
    return variants + ((("2x16x2", Replicate(), 2),) if name == "unicl" else ())


def catalogue_equivalence(rank: int, world: int, out: Path) -> None:
    for name in CATALOGUE:
        batch = local_part(catalogue_batch(), rank, world)
        objective = build_objective(ObjectiveConfig(name=name))
        for label, strategy, accum in catalogue_splits(name):
            model = strategy.wrap(catalogue_model(name))
            loss, _ = forward_backward(model, objective, batch, accum)
            strategy.reduce_gradients(model)
            result = {f"grad/{k}": v for k, v in gradients(model).items()} | {"loss": loss.reshape(1)}
            if rank == 0:
                save_file(result, out / f"{name}_{label}.safetensors")


SCENARIOS = (equivalence, nonfinite_guard, nonfinite_run, fsdp_resume, reference_run, catalogue_equivalence)


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with process_group():
        for scenario in SCENARIOS:
            scenario(rank, world, Path(out))
            dist.barrier()


# Catalogue items 8-11: their extra views (clauses, attribute texts, region crops, cached descriptions) and the
# losses that gather them (grouped InfoNCE, ProtoNCE's k-means on the global batch, clause positives).
VIEW_MODELS = {"gpt4image": {"num_classes": 56, "description_dim": 8}, "medslip": {"attribute_streams": ["shape", "colour"]},
               "velvet": {"head": "tokens"}, "ps3": {}}


def views_model(name: str) -> torch.nn.Module:
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 32
    for key, value in VIEW_MODELS[name].items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return build_model(cfg, IMAGE, VOCAB, CONTEXT)


def views_batch(name: str) -> dict:
    """A real collated shapes batch of GLOBAL_BATCH with the objective's views."""
    from vlalign.data.loader import collate
    from vlalign.data.shapes import ShapesConfig, ShapesWorld
    from vlalign.data.tokenizer import train_tokenizer
    from vlalign.data.transforms import ImageTransform
    from vlalign.data.views import AttributeView, ClauseView, DescriptionView, RegionView

    world = ShapesWorld(GLOBAL_BATCH, seed=4, cfg=ShapesConfig(image_size=IMAGE))
    captions = world.captions()
    table = torch.nn.functional.normalize(torch.randn(len(set(captions)), 8, generator=torch.Generator().manual_seed(1)),
                                          dim=-1)
    views = {"gpt4image": (DescriptionView(sorted(set(captions)), table),),
             "medslip": (AttributeView(("shape", "colour")),), "velvet": (ClauseView(3),), "ps3": (RegionView(0),)}
    batch = collate(world, list(range(GLOBAL_BATCH)), train_tokenizer(captions, VOCAB), CONTEXT,
                    ImageTransform(IMAGE, 3), views=views[name])
    return {k: v for k, v in batch.items() if torch.is_tensor(v) or k in ("extra_texts", "extra_images")}


def views_part(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of every tensor, inside the extra_texts / extra_images dicts too."""
    n = GLOBAL_BATCH // world
    return {k: views_part(v, rank, world) if isinstance(v, dict) else v[rank * n : (rank + 1) * n]
            for k, v in batch.items()}


def catalogue_views_equivalence(rank: int, world: int, out: Path) -> None:
    for name in VIEW_MODELS:
        batch = views_part(views_batch(name), rank, world)
        model = Replicate().wrap(views_model(name))
        loss, metrics = forward_backward(model, build_objective(ObjectiveConfig(name=name)), batch)
        Replicate().reduce_gradients(model)
        if rank == 0:
            save_file({f"grad/{k}": v for k, v in gradients(model).items()} | {"loss": loss.reshape(1)}
                      | {f"metric/{k}": torch.tensor([v]) for k, v in metrics.items()}, out / f"views_{name}.safetensors")


SCENARIOS = (*SCENARIOS, catalogue_views_equivalence)
