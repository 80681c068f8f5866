"""The ``vlalign`` command: thin over the library (parse, call, print).

Errors the user can fix print as one paragraph and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vlalign import __version__
from vlalign.errors import VlalignError

EPILOG = """examples:
  vlalign train                                   # default recipe (shapes-clip), ~3 min on 2 CPU cores
  vlalign train --recipe tiny --out runs/smoke    # seconds: a smoke test
  vlalign train --set optim.lr=5e-4 --set train.steps=1000
  vlalign train --recipe shapes-siglip --seeds 0-2   # 3 seeds; mean/std table in runs/shapes-siglip-seeds/
  vlalign eval --checkpoint runs/shapes-clip --task zeroshot --data fashion-mnist:test
  vlalign benchmark --checkpoint runs/shapes-clip --suite shapes
  vlalign chat --checkpoint runs/cgvlm-stage2 --image scene.png "what colour is the star?"
  vlalign recipes
  vlalign config show --recipe shapes-siglip --set train.steps=100    # the resolved config, as YAML
  vlalign data convert csv:pairs.csv --to shards/    # then --set data.train=wds:shards/shards.json
  vlalign data inspect wds:shards/{000000..000009}.tar
"""


DEBUG_HELP = "show full tracebacks for errors"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vlalign", description="Train, evaluate and serve vision-language alignment models.",
                    epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vlalign {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (resumes automatically if --out holds a checkpoint)",
                           description="Train from a recipe and/or YAML config; then evaluate and write "
                           "report.html. Rerunning the same command resumes from the newest complete checkpoint. "
                           "With --seeds, the config runs once per seed and the seeds' eval metrics are summarised "
                           "(mean, std, min, max).")
    add_config_arguments(train)
    train.add_argument("--out", help="run directory (default: runs/<recipe name>); with --seeds, the directory of "
                       "the seeds' runs and summary")
    train.add_argument("--resume", action="store_true",
                       help="require an existing checkpoint in --out to resume from (resuming is automatic anyway)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N processes on this machine (as torchrun --nproc_per_node=N; gloo on CPU)")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--seeds", metavar="SPEC",
                       help="train the config once per seed (sets train.seed), e.g. 0-4 or 0,2,5: each seed into "
                       "OUT/seed-S/ (a normal run directory), then OUT/seeds.json, OUT/seeds.md and OUT/report.html "
                       "with every eval metric's mean, std (n-1), min, max and per-seed values. Rerunning skips "
                       "finished seeds and resumes an interrupted one. Default OUT: runs/<recipe name>-seeds")
    train.add_argument("--seeds-parallel", type=int, default=1, metavar="N",
                       help="with --seeds: train N seeds at once, each in its own process, train.threads (0 = all "
                       "cores) shared between them (default 1: one after another)")

    ev = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate a run; writes eval.json and "
                        "report.html into the run directory and prints the results as JSON.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--checkpoint", action="append", default=[], metavar="RUN",
                    help="run directory (or one of its checkpoints/step-N, or an export); repeatable: one table")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="a model from outside vlalign, repeatable: hf-clip:DIR (a Hugging Face CLIPModel directory) "
                    "or open-clip:FILE,activation=quick_gelu|gelu,tokenizer=DIR (an open_clip state dict)")
    ev.epilog_from = eval_task_list
    ev.add_argument("--task", action="append", help="task to run (repeatable; the tasks are listed below); "
                    "default: the run's eval.tasks")
    ev.add_argument("--data", help="data spec to evaluate on, e.g. fashion-mnist:test (default: the task's own)")

    bench = sub.add_parser("benchmark", help="run a suite of eval tasks and write one table",
                           description="Run a named suite of (task, data) entries; writes benchmark-SUITE.md/.json/"
                           ".html into the run directory. Finished entries are skipped on rerun.")
    bench.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    bench.add_argument("--suite", default="shapes", help="suite name: shapes (default) or full")
    bench.add_argument("--force", action="store_true", help="rerun every entry, ignoring finished ones")

    chat = sub.add_parser("chat", help="ask a generative run about an image",
                          description="Answer a question about an image with a generative (vlm) run. Without a "
                          "question, open a conversation about the image: one question a line, the model loaded once; "
                          "an empty line captions the image, 'quit' or end of input stops.")
    chat.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    chat.add_argument("--image", required=True, help="a PNG or JPEG file")
    chat.add_argument("question", nargs="?", default="", help='e.g. "what colour is the star?" (default: a conversation)')
    chat.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: what fits)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    chat.add_argument("--top-k", type=int, help="sample from the k most likely tokens only")
    chat.add_argument("--seed", type=int, help="seed for sampling")

    sub.add_parser("recipes", help="list the named recipes")
    config = sub.add_parser("config", help="show the config a recipe, YAML file and --set overrides resolve to")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    add_config_arguments(config_sub.add_parser("show", help="print the resolved config as YAML (trains nothing)"))

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    shapes = data_sub.add_parser("make-shapes", help="render a shapes-world dataset to a folder (PNG + captions.csv)")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--n", type=int, default=1000)
    shapes.add_argument("--seed", type=int, default=0)
    moving = data_sub.add_parser("make-moving-shapes", help="render moving-shapes clips to a folder (PNG frame "
                                 "strips + captions.csv with each clip's events)")
    moving.add_argument("--out", required=True)
    moving.add_argument("--n", type=int, default=1000)
    moving.add_argument("--seed", type=int, default=0)
    moving.add_argument("--options", default="", help="further moving-shapes spec options, e.g. frames=6,events=1-1")
    data_sub.add_parser("sources", help="list the data sources and their spec syntax")
    convert = data_sub.add_parser("convert", help="write any data source as WebDataset shards plus shards.json")
    convert.add_argument("source", metavar="SRC", help="a data spec, e.g. csv:pairs.csv or folder:photos")
    convert.add_argument("--to", required=True, metavar="DIR", help="an empty or new folder for the shards")
    convert.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    inspect = data_sub.add_parser("inspect", help="counts, image sizes, channel statistics, caption lengths, skips")
    inspect.add_argument("spec", metavar="SPEC", help="a data spec, e.g. wds:shards/shards.json")
    inspect.add_argument("--limit", type=int, metavar="N", help="read only N evenly spaced samples")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    filt = data_sub.add_parser("filter", help="drop the pairs a trained run scores least similar; write the rest "
                               "as shards (Open-Qwen2VL-style filtering)")
    filt.add_argument("source", metavar="SRC", help="a data spec, e.g. wds:raw/shards.json")
    filt.add_argument("--checkpoint", required=True, help="a trained dual-encoder run (or one of its checkpoints)")
    filt.add_argument("--drop", type=float, required=True, metavar="F", help="fraction of pairs to drop, e.g. 0.2")
    filt.add_argument("--to", required=True, metavar="DIR", help="an empty or new folder for the kept shards")
    filt.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    reduce = data_sub.add_parser("reduce", help="keep a representative fraction of the pairs: k-means on a trained "
                                 "run's embeddings, nearest to each centre (TL;DR-style data reduction)")
    reduce.add_argument("source", metavar="SRC", help="a data spec, e.g. wds:raw/shards.json")
    reduce.add_argument("--checkpoint", required=True, help="a trained dual-encoder run (or one of its checkpoints)")
    reduce.add_argument("--keep", type=float, required=True, metavar="F", help="fraction of pairs to keep, e.g. 0.25")
    reduce.add_argument("--clusters", type=int, default=100, metavar="K", help="k-means clusters (default 100)")
    reduce.add_argument("--to", required=True, metavar="DIR", help="an empty or new folder for the kept shards")
    reduce.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    add_use_commands(sub)
    add_efficiency_commands(sub)
    merge = sub.add_parser("merge", help="interpolate two runs' weights, or add one run's change to another base",
                           description="Write a run directory with (1-alpha)*A + alpha*B, or with --onto C the "
                           "residual C + alpha*(B - A). The runs must share architecture and tokenizer.")
    merge.add_argument("run_a", metavar="RUN_A", help="run directory A")
    merge.add_argument("run_b", metavar="RUN_B", help="run directory B")
    merge.add_argument("--alpha", type=float, help="weight of B (default 0.5), or of B - A with --onto (default 1)")
    merge.add_argument("--onto", metavar="RUN_C", help="add B - A to this run's weights instead of interpolating")
    merge.add_argument("--out", required=True, help="the new run directory")
    add_debug_everywhere(parser)
    return parser


class Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be computed when its help is shown (``epilog_from``): the eval
    task list imports every task module, which other commands need not pay for."""

    epilog_from = None

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def eval_task_list() -> str:
    """Every registered eval task, dual-encoder and generative apart, wrapped."""
    import textwrap

    from vlalign.eval import TASKS  # importing it registers every task
    from vlalign.eval.tasks import GENERATIVE_TASKS

    dual = sorted(set(TASKS) - GENERATIVE_TASKS)
    return "\n".join([textwrap.fill("tasks: " + ", ".join(dual), 100, subsequent_indent="  "),
                      textwrap.fill("tasks of generative runs: " + ", ".join(sorted(GENERATIVE_TASKS)), 100,
                                    subsequent_indent="  ")])


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--recipe, --config and --set: what a run's config is made of (``vlalign.recipes.resolve_config``)."""
    parser.add_argument("--recipe", help="named preset (see `vlalign recipes`); default: the YAML's `recipe:`, "
                        "else shapes-clip")
    parser.add_argument("--config", help="YAML file of config values, on top of the recipe (it may name its "
                        "recipe: `recipe: NAME`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable; applied last)")


def add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any command or action too; given nowhere there, the top-level value stays."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                add_debug_everywhere(sub)


def add_efficiency_commands(sub) -> None:
    """``average`` and ``resolution`` (MindVL: checkpoint averaging and test-time resolution)."""
    average = sub.add_parser("average", help="average a run's last K checkpoints into a new, loadable run",
                             description="MindVL-style weight averaging: OUT gets the run's config, tokenizer and "
                             "preprocessing and one checkpoint holding the mean of RUN's newest K checkpoints.")
    average.add_argument("run", metavar="RUN", help="a run directory (train with train.keep_last_k >= K)")
    average.add_argument("--last", type=int, required=True, metavar="K", help="how many of the newest checkpoints")
    average.add_argument("--out", required=True, help="a new run directory for the averaged weights")

    cmr = sub.add_parser("cmr", help="fit the CMR scaling law to text-mixture runs; predict the critical mixture ratio",
                         description="Fit L(r, D) = a + b*D^-alpha + c*r^-beta (r = data.text_ratio, D = samples seen) "
                         "to the held-out text losses the runs logged, and solve for the smallest text share whose "
                         "predicted loss at --budget stays within --tolerance of --reference.")
    cmr.add_argument("runs", nargs="+", metavar="RUN", help="runs trained with data.text_ratio > 0 and data.text_heldout")
    cmr.add_argument("--budget", type=float, help="samples seen (default: the largest in the runs)")
    cmr.add_argument("--tolerance", type=float, default=0.05, help="allowed rise of the text loss, nats (0.05)")
    cmr.add_argument("--reference", type=float, help="the text loss to keep (default: the runs' mean at step 0)")
    cmr.add_argument("--loss-key", default="text/heldout_loss", help="the metrics.jsonl key to fit")

    resolution = sub.add_parser("resolution", help="evaluate a dual-encoder run at several image sizes; pick the best",
                                description="MindVL's test-time resolution search: score the run at each size "
                                "(position embeddings interpolated) on --select, report --test too; prints JSON.")
    resolution.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    resolution.add_argument("--sizes", required=True, metavar="S,S,...", help="image sizes, e.g. 24,32,40,48")
    resolution.add_argument("--select", required=True, metavar="SPEC", help="held-out data the size is chosen on")
    resolution.add_argument("--test", metavar="SPEC", help="data the chosen size is reported on (optional)")
    resolution.add_argument("--task", choices=("zeroshot", "retrieval"), default="zeroshot")


def add_use_commands(sub) -> None:
    """``embed``, ``serve`` and ``export``: using a trained run."""
    embed = sub.add_parser("embed", help="write image and/or text embeddings of a data source (safetensors)",
                           description="Embed a data source with a trained run. Writes FILE (safetensors) and "
                           "FILE.json (keys, captions); rerunning after an interruption skips finished chunks.")
    embed.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    embed.add_argument("--data", required=True, help="data spec, e.g. shapes:n=1000,seed=3")
    embed.add_argument("--out", required=True, help="output .safetensors file")
    embed.add_argument("--what", choices=("image", "text", "both"), default="both")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--chunk-size", type=int, default=4096, help="samples per resumable chunk")
    embed.add_argument("--int8", action="store_true",
                       help="run the towers' linear layers in int8 on CPU: faster on most x86 CPUs, embeddings "
                       "approximate (cosine about 0.999 to fp32); see benchmarks/results/vs_open_clip.md")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")

    serve = sub.add_parser("serve", help="serve text-to-image search and zero-shot labels (JSON API + web page)")
    serve.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    serve.add_argument("--images", required=True, help="data spec of the images to index")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)

    export = sub.add_parser("export", help="export a run: hf (config.json + model.safetensors + tokenizer) "
                            "or torchscript towers")
    export.add_argument("--checkpoint", required=True, help="run directory (or one of its checkpoints/step-N)")
    export.add_argument("--format", choices=("hf", "torchscript"), default="hf")
    export.add_argument("--out", required=True, help="output directory")


def cmd_train(args) -> int:
    from vlalign import dist
    from vlalign.api import load
    from vlalign.checkpoint import latest_checkpoint
    from vlalign.eval import evaluate
    from vlalign.recipes import check_stages, resolve_config
    from vlalign.train import run_training
    from vlalign.train.distributed import env_world_size, launch, process_group

    cfg = resolve_config(args.recipe, args.config, args.overrides)
    check_stages(cfg)
    if args.seeds is not None:
        return train_seeds(cfg, args)
    if args.seeds_parallel != 1:
        raise VlalignError("--seeds-parallel needs --seeds (the seeds to train), e.g. --seeds 0-3 --seeds-parallel 2.")
    out = Path(args.out or Path("runs") / cfg.name)
    if args.resume and latest_checkpoint(out / "checkpoints") is None:
        raise VlalignError(f"--resume: {out} has no complete checkpoint to resume from. Drop --resume to start fresh.")
    if args.nproc < 1:
        raise VlalignError(f"--nproc must be at least 1, got {args.nproc}.")
    if args.nproc > 1 and env_world_size() == 1:  # the launcher: the ranks rerun this command without --nproc
        return launch(without_option(args.argv, "--nproc"), args.nproc)
    with process_group():
        state = run_training(cfg, out, progress=not args.quiet)
        is_main = dist.is_main()
    if not is_main:
        return 0
    print(f"trained {state.step} steps -> {out}")
    if args.no_eval or not cfg.eval.tasks:
        return 0
    try:
        result = evaluate(load(out), cfg.eval.tasks)
    except VlalignError as err:  # the run itself is complete: say why its evaluation stopped, exit 0
        print(f"warning: the evaluation after training stopped: {err} The trained run is complete in {out}; "
              f"evaluate it with `vlalign eval --checkpoint {out} --task TASK --data SPEC`.", file=sys.stderr)
        return 0
    print_skipped(result.skipped)
    print_summary(result.results)
    print(f"report: {out / 'report.html'}")
    return 0


def train_seeds(cfg, args) -> int:
    """``vlalign train --seeds SPEC``: ``vlalign.train.seeds.run_seeds`` and a summary table."""
    from vlalign.train.seeds import parse_seeds, run_seeds

    seeds = parse_seeds(args.seeds, "--seeds")
    if args.nproc != 1:
        raise VlalignError("--seeds trains on one process per seed; drop --nproc (use --seeds-parallel N to train "
                           "N seeds at once).")
    if args.resume:
        raise VlalignError("--resume does not apply to --seeds: rerunning the command resumes every unfinished seed.")
    out = Path(args.out or Path("runs") / f"{cfg.name}-seeds")
    summary = run_seeds(cfg, seeds, out, evaluate=not args.no_eval, parallel=args.seeds_parallel,
                        progress=not args.quiet, say=lambda line: print(line, file=sys.stderr))
    print(f"trained seeds {args.seeds} -> {out}")
    if summary is None:
        return 0
    print_seed_summary(summary)
    print(f"all metrics: {out / 'seeds.md'}; report: {out / 'report.html'}")
    return 0


def print_seed_summary(summary, stream=None) -> None:
    """The headline metrics (those of the single-run summary) as mean ± std over the seeds."""
    from vlalign.eval.report import SUMMARY_KEYS

    stream = stream or sys.stdout

    rows = [(name, s.mean_std(), f"{s.min:.3f}", f"{s.max:.3f}", str(s.n))
            for name, s in summary.metrics.items() if name.rsplit("/", 1)[-1] in SUMMARY_KEYS]
    if not rows:
        return
    header = ("metric", "mean ± std", "min", "max", "n")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line, file=stream)
    for row in [header, None, *rows]:
        print(line if row is None else "  ".join(c.ljust(w) for c, w in zip(row, widths)), file=stream)
    print(line, file=stream)


def cmd_eval(args) -> int:
    from vlalign.eval.compare import evaluate_models, table

    names = args.checkpoint + args.model
    if not names:
        raise VlalignError("vlalign eval: name a model with --checkpoint RUN or --model SPEC (either repeatable).")
    models = evaluate_models(names, args.task, args.data)
    print(json.dumps([row for m in models for row in m.rows()], indent=1))
    print(table(models), file=sys.stderr)
    return 0


def cmd_benchmark(args) -> int:
    from vlalign.eval import save_results
    from vlalign.eval.benchmark import run_benchmark, table_markdown

    model = load_dual_encoder(args.checkpoint, "benchmark suites score a dual encoder's embeddings")
    out = run_benchmark(model, args.suite, force=args.force, log=lambda line: print(line, file=sys.stderr))
    if out["fresh"].results:
        save_results(model, out["fresh"])
    print(table_markdown(out["table"]))
    return 0


def cmd_chat(args) -> int:
    from vlalign.api import VisualAssistant, load
    from vlalign.data.images import read_image

    model = load(args.checkpoint)
    if not isinstance(model, VisualAssistant) or model.model.vision is None:
        raise VlalignError(f"{args.checkpoint} is a '{model.config.model.arch}' run; chat needs a vision-language "
                           "run (model.arch vlm), e.g. one trained with --recipe cgvlm-stage2.")
    image = read_image(args.image, model.transform.in_channels)

    def reply(question: str) -> str:
        return model.generate([image], [question], max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, seed=args.seed)[0]

    if args.question:
        print(reply(args.question))
        return 0
    # A conversation about one image. Each turn is answered from the image and that question alone: the
    # instruction data is single-turn, so earlier turns in the context would be text the model never saw.
    print(f"{args.image}: ask about the image, one question a line (empty line: caption; 'quit' stops)",
          file=sys.stderr)
    for line in sys.stdin:
        question = line.strip()
        if question.lower() in ("quit", "exit"):
            break
        print(reply(question), flush=True)
    return 0


def cmd_recipes(args) -> int:
    import shutil
    import textwrap

    from vlalign.recipes import DEFAULT_RECIPE, RECIPES, describe

    width = max(map(len, RECIPES))
    columns = max(shutil.get_terminal_size().columns, width + 40)
    for name in sorted(RECIPES):
        mark = " (default)" if name == DEFAULT_RECIPE else ""
        print(textwrap.fill(describe(name) + mark, columns, initial_indent=f"{name:<{width}}  ",
                            subsequent_indent=" " * (width + 2), break_on_hyphens=False, break_long_words=False))
    return 0


def cmd_config(args) -> int:
    from vlalign.config import dump_yaml
    from vlalign.recipes import resolve_config

    if args.config_command != "show":
        raise VlalignError("`vlalign config` needs an action: show (see `vlalign config --help`).")
    print(dump_yaml(resolve_config(args.recipe, args.config, args.overrides)), end="")
    return 0


def cmd_data(args) -> int:
    if args.data_command == "make-shapes":
        from vlalign.data.export import export_shapes

        path = export_shapes(args.out, args.n, args.seed)
        print(f"wrote {args.n} images and {path}")
        return 0
    if args.data_command == "make-moving-shapes":
        from vlalign.data.export import export_moving_shapes

        path = export_moving_shapes(args.out, args.n, args.seed, args.options)
        print(f"wrote {args.n} clips and {path}")
        return 0
    if args.data_command == "sources":
        from vlalign.data.specs import HELP

        for name in sorted(HELP):
            print(f"{name:<14} {HELP[name]}")
        return 0
    if args.data_command == "convert":
        from vlalign.data.convert import convert
        from vlalign.data.specs import build_source

        report = convert(build_source(args.source), args.to, args.shard_size, progress=True)
        skipped = ", ".join(f"{r} {c}" for r, c in report.skipped.most_common()) or "none"
        print(f"wrote {report.written} samples in {len(report.shards)} shards; skipped: {skipped}")
        print(f"their data spec: wds:{report.index}  (e.g. --set data.train=wds:{report.index})")
        return 0
    if args.data_command == "inspect":
        from vlalign.data.inspect import format_report, inspect_source
        from vlalign.data.specs import build_source

        report = inspect_source(build_source(args.spec), args.limit, progress=not args.json)
        print(json.dumps(report.as_dict(), indent=1) if args.json else format_report(report))
        return 0
    if args.data_command == "filter":
        return cmd_data_filter(args)
    if args.data_command == "reduce":
        return cmd_data_reduce(args)
    raise VlalignError("`vlalign data` needs an action: make-shapes, make-moving-shapes, sources, convert, inspect, "
                       "filter or reduce "
                       "(see `vlalign data --help`).")


GENERATIVE_INSTEAD = "For a generative run use `vlalign chat` or `vlalign eval --task vqa` (caption, text-qa)."


def load_dual_encoder(checkpoint: str, why: str):
    """``vlalign.load(checkpoint)``, refusing runs that are not dual encoders; ``why`` says what needs one."""
    from vlalign.api import Aligner, load

    model = load(checkpoint)
    if not isinstance(model, Aligner):
        raise VlalignError(f"{checkpoint} is a '{model.config.model.arch}' run; {why} (model.arch dual-encoder). "
                           + GENERATIVE_INSTEAD)
    return model


def cmd_data_filter(args) -> int:
    from vlalign.curate.similarity_filter import filter_source
    from vlalign.data.specs import build_source

    model = load_dual_encoder(args.checkpoint, "filtering scores pairs with a dual encoder")
    result = filter_source(model, build_source(args.source), args.drop, args.to, args.shard_size, progress=True)
    print(f"kept {int(result.kept.sum())} of {len(result.kept)} pairs (score >= {result.threshold:.4f}); "
          f"their data spec: wds:{result.shards.index}")
    return 0


def cmd_data_reduce(args) -> int:
    from vlalign.curate.reduction import reduce_source
    from vlalign.data.specs import build_source

    model = load_dual_encoder(args.checkpoint, "reduction clusters a dual encoder's embeddings")
    report = reduce_source(model, build_source(args.source), args.keep, args.clusters, args.to, args.shard_size)
    print(f"kept {report.written} pairs; their data spec: wds:{report.index}")
    return 0


def cmd_embed(args) -> int:
    from vlalign.data.specs import build_source
    from vlalign.embed import embed_source

    aligner = load_dual_encoder(args.checkpoint, "embed writes a dual encoder's embeddings")
    if args.int8:
        aligner.quantize_int8()
    path = embed_source(aligner, build_source(args.data), args.out, args.what, args.batch_size,
                        args.chunk_size, progress=not args.quiet, spec=args.data)
    print(f"wrote {path} and {path}.json")
    return 0


def cmd_serve(args) -> int:
    from vlalign.data.specs import build_source
    from vlalign.serve.server import make_server
    from vlalign.serve.service import SearchService

    aligner = load_dual_encoder(args.checkpoint, "serve searches images by a dual encoder's embeddings")
    service = SearchService(aligner, build_source(args.images), args.images)
    server = make_server(service, args.host, args.port)
    print(f"serving {len(service.index)} images on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


LAYOUTS = {"clip": "a Hugging Face CLIPModel directory", "vlalign": "vlalign's own layout (a CLIPModel cannot express "
           "this architecture)", "torchscript": "TorchScript towers"}


def cmd_export(args) -> int:
    from vlalign.export import export

    layout = export(args.checkpoint, args.format, args.out)
    print(f"exported {LAYOUTS[layout]} -> {args.out}")
    return 0


def cmd_average(args) -> int:
    from vlalign.train.averaging import average_run

    out = average_run(args.run, args.last, args.out)
    print(f"averaged the last {args.last} checkpoints of {args.run} -> {out}")
    return 0


def cmd_cmr(args) -> int:
    from vlalign.eval.cmr import fit_cmr, points_from_runs, start_loss

    points = points_from_runs(args.runs, args.loss_key)
    law = fit_cmr(*points)
    budget = args.budget or max(points[1])
    reference = args.reference if args.reference is not None else start_loss(args.runs, args.loss_key)
    print(json.dumps({"law": law.to_dict(), "points": len(points[0]), "budget_samples": budget,
                      "reference": reference, "tolerance": args.tolerance,
                      "critical_text_ratio": law.critical_ratio(budget, reference, args.tolerance)}, indent=1))
    return 0


def cmd_resolution(args) -> int:
    from vlalign.eval.resolution import resolution_search

    model = load_dual_encoder(args.checkpoint, "the resolution search scores dual encoders")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise VlalignError(f"--sizes takes whole numbers separated by commas, e.g. 24,32,48; got {args.sizes!r}.") from None
    found = resolution_search(model, sizes, args.select, args.test, args.task)
    print(json.dumps({"task": found.task, "trained_size": found.trained_size, "best_size": found.best_size,
                      "curve": found.curve}, indent=1))
    return 0


def cmd_merge(args) -> int:
    from vlalign.adapt.merging import merge_runs

    out = merge_runs(args.run_a, args.run_b, args.out, args.alpha, args.onto)
    print(f"merged -> {out}")
    return 0


def print_skipped(lines: list[str]) -> None:
    """One line per eval task that did not apply, on stderr."""
    for line in lines:
        print(line, file=sys.stderr)


def print_summary(results: list[dict], stream=sys.stdout) -> None:
    from vlalign.eval.report import summary_rows

    rows = summary_rows(results)
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows + [("task", "labels / data", "metrics")]) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    print(line, file=stream)
    print("  ".join(h.ljust(w) for h, w in zip(("task", "labels / data", "metrics"), widths)), file=stream)
    print(line, file=stream)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)), file=stream)
    print(line, file=stream)


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` minus ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(name + "="):
            out.append(item)
    return out


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "benchmark": cmd_benchmark, "chat": cmd_chat, "recipes": cmd_recipes,
            "config": cmd_config, "data": cmd_data, "embed": cmd_embed, "serve": cmd_serve, "export": cmd_export,
            "average": cmd_average, "resolution": cmd_resolution,
            "merge": cmd_merge, "cmr": cmd_cmr}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except VlalignError as err:
        if args.debug:
            raise
        print(f"{getattr(err, 'label', 'error')}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
