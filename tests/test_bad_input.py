"""Bad input anywhere a user types or points (RELIABILITY.md, issue 8 point 7): one clear paragraph,
exit code 2, no traceback unless --debug. Plus hypothesis fuzzing of the two parsers users type into.
"""

import json
import shutil
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import train_argv

from vlalign.cli import main
from vlalign.config import apply_overrides, to_dict
from vlalign.data.specs import SOURCES, build_source
from vlalign.errors import ConfigError, VlalignError
from vlalign.recipes import get_recipe


def check_one_paragraph_exit_2(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, message", [
    (["--recipe", "nope"], "Unknown recipe 'nope'. Run `vlalign recipes`"),
    (["--set", "optim.lrr=1"], "Unknown config key 'optim.lrr' in --set 'optim.lrr=1' (no 'lrr' under optim). Did you mean 'lr'?"),
    (["--set", "train.steps=many"], "Config key 'train.steps' in --set expects an integer, got 'many'"),
    (["--set", "optim.lr"], "expected key.path=value"),
    (["--set", "train.log_every=0"], "'train.log_every' in --set must be positive"),
    (["--set", "data.train=nowhere:x"], "Unknown data source 'nowhere'"),
    (["--set", "data.train=shapes:n=0,seed=0"], "a shapes world needs at least 1 sample"),
    (["--nproc", "0"], "--nproc must be at least 1"),
])
def test_bad_train_input_is_one_paragraph_and_exit_2(tmp_path, capsys, args, message):
    check_one_paragraph_exit_2(capsys, ["train", "--out", str(tmp_path / "run"), "--quiet", *args], message)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: [0.1,\n")
    check_one_paragraph_exit_2(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "run")],
                               f"{config} is not valid YAML at line 3, column 1")


def test_a_directory_that_is_not_a_run_or_checkpoint(tmp_path, capsys):
    check_one_paragraph_exit_2(capsys, ["eval", "--checkpoint", str(tmp_path)], "is not a vlalign run directory")
    check_one_paragraph_exit_2(capsys, ["train", "--resume", "--out", str(tmp_path)], "has no complete checkpoint")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    check_one_paragraph_exit_2(capsys, ["train", "--recipe", "tiny", "--out", str(not_a_dir / "run"), "--quiet"],
                               "Cannot create the run directory")


def test_a_damaged_checkpoint_is_named(reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / "checkpoints" / "step-20" / "state.json").write_text("{not json")
    check_one_paragraph_exit_2(capsys, train_argv(out), "step-20 is damaged")


def test_a_master_port_in_use_is_reported(tmp_path, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("MASTER_PORT", str(busy.getsockname()[1]))
        check_one_paragraph_exit_2(capsys, train_argv(tmp_path / "run", extra=["--nproc", "2"]), "is in use")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="Unknown recipe"):
        main(["--debug", "train", "--recipe", "nope", "--out", str(tmp_path)])


def test_the_train_options_are_frozen():
    """A new option is a decision (torchtitan's test_no_new_cli_options): update this list knowingly."""
    from vlalign.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert sorted(a.dest for a in train._actions) == ["config", "debug", "help", "no_eval", "nproc", "out",
                                                      "overrides", "quiet", "recipe", "resume", "seeds",
                                                      "seeds_parallel"]


# ---------------------------------------------------------------------------------------------
# fuzzing: whatever the text, the parsers raise only vlalign's own errors

def leaf_paths(data: dict, prefix: str = "") -> list[str]:
    return [p for k, v in data.items() for p in (leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])]


KEYS = leaf_paths(to_dict(get_recipe("tiny")))
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + "x") | st.text(max_size=20)
values = st.text(max_size=30) | st.sampled_from(["1e-3", "-1", "0", "1e400", "nan", ".inf", "true", "[1, 2]",
                                                  "{a: 1}", "null", "!!python/object:os.system", "'", "- x"])
overrides = st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=40)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(overrides, max_size=3))
def test_fuzzed_overrides_raise_only_vlalign_errors(items):
    try:
        cfg = apply_overrides(get_recipe("tiny"), items)
    except VlalignError:
        return
    json.dumps(to_dict(cfg))  # whatever got through is a plain, valid config


shapes_options = st.sampled_from(["n", "seed", "objects", "channels", "holdout", "size", ""])
shapes_values = st.text(max_size=12) | st.integers(-10, 10**9).map(str) | st.sampled_from(["rgb", "stains", "red-star"])
shapes_args = st.lists(st.tuples(shapes_options, shapes_values).map("=".join), max_size=4).map(",".join)
specs = (shapes_args.map("shapes:".__add__)
         | st.tuples(st.sampled_from(sorted(SOURCES)), st.text(max_size=20)).map(":".join)
         | st.text(max_size=40))


@FUZZ
@given(specs)
def test_fuzzed_data_specs_raise_only_vlalign_errors(spec):
    try:
        source = build_source(spec)
    except VlalignError:
        return
    assert len(source) >= 1
