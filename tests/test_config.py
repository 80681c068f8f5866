import pytest

from vlalign.config import RunConfig, apply_overrides, diff, dump_yaml, load_yaml, to_dict
from vlalign.errors import ConfigError
from vlalign.recipes import RECIPES, get_recipe


def test_every_recipe_is_valid_and_round_trips_through_yaml(tmp_path):
    for name in RECIPES:
        cfg = get_recipe(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(cfg))
        assert to_dict(load_yaml(path)) == to_dict(cfg)


def test_set_overrides_parse_yaml_scalars():
    cfg = apply_overrides(RunConfig(), ["optim.lr=3e-4", "train.steps=12", "train.deterministic=false",
                                        "objective.name=siglip"])
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 12 and cfg.train.deterministic is False
    assert cfg.objective.name == "siglip"


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*Did you mean 'lr'"):
        apply_overrides(RunConfig(), ["optim.lrr=1"])


def test_ill_typed_value_names_the_key():
    with pytest.raises(ConfigError, match=r"'train\.steps'.*integer"):
        apply_overrides(RunConfig(), ["train.steps=many"])


def test_bad_choice_lists_the_choices():
    with pytest.raises(ConfigError, match=r"objective\.name.*clip, siglip"):
        apply_overrides(RunConfig(), ["objective.name=clap"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("model:\n  vision:\n    widht: 3\n")
    with pytest.raises(ConfigError, match=r"model\.vision\.widht.*bad\.yaml"):
        load_yaml(bad_key)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML at line"):
        load_yaml(broken)


def test_image_size_must_divide_into_patches():
    with pytest.raises(ConfigError, match="multiple of"):
        apply_overrides(RunConfig(), ["data.image_size=60"])


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="vlalign recipes"):
        get_recipe("nope")


def test_diff_lists_changed_fields():
    a, b = to_dict(RunConfig()), to_dict(apply_overrides(RunConfig(), ["model.embed_dim=64"]))
    assert diff(a, b) == ["model.embed_dim: 128 -> 64"]
