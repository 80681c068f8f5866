import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlalign.api import load
from vlalign.data.specs import build_source
from vlalign.embed import embed_source, load_embeddings
from vlalign.errors import VlalignError

SPEC = "shapes:n=40,seed=5"


def test_embeddings_match_encode_and_keys(trained_tiny_run, tmp_path):
    aligner, source = load(trained_tiny_run), build_source(SPEC)
    out = embed_source(aligner, source, tmp_path / "e.safetensors", "both", batch_size=7, chunk_size=16,
                       progress=False, spec=SPEC)
    emb = load_embeddings(out)
    samples = [source[i] for i in range(len(source))]
    torch.testing.assert_close(emb.image, aligner.encode_image([s.image for s in samples]), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.text, aligner.encode_text([s.caption for s in samples]), atol=1e-5, rtol=0)
    assert emb.keys == [s.key for s in samples] and emb.index.tolist() == list(range(40))
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["keys"] == emb.keys and sidecar["data"] == SPEC and sidecar["rows"] == 40


def test_rerun_skips_finished_chunks(trained_tiny_run, tmp_path):
    aligner, source = load(trained_tiny_run), build_source(SPEC)
    out = tmp_path / "e.safetensors"
    embed_source(aligner, source, out, "image", chunk_size=16, progress=False, spec=SPEC)
    first = load_embeddings(out).image
    parts = tmp_path / "e.safetensors.parts"
    # Mark a finished chunk: a rerun that skipped it carries the mark into the output.
    chunk0 = load_file(str(parts / "chunk-000000.safetensors"))
    with safe_open(str(parts / "chunk-000000.safetensors"), "pt") as f:
        meta = f.metadata()
    chunk0["image"] = torch.full_like(chunk0["image"], 7.0)
    save_file(chunk0, str(parts / "chunk-000000.safetensors"), metadata=meta)
    (parts / "chunk-000002.safetensors").unlink()  # an interrupted run: the last chunk is missing
    embed_source(aligner, source, out, "image", chunk_size=16, progress=False, spec=SPEC)
    second = load_embeddings(out).image
    assert (second[:16] == 7.0).all()
    torch.testing.assert_close(second[16:], first[16:])


def test_parts_of_another_job_are_refused(trained_tiny_run, tmp_path):
    aligner = load(trained_tiny_run)
    out = tmp_path / "e.safetensors"
    embed_source(aligner, build_source(SPEC), out, "text", chunk_size=16, progress=False, spec=SPEC)
    with pytest.raises(VlalignError, match="different embedding job"):
        embed_source(aligner, build_source("shapes:n=20,seed=6"), out, "text", chunk_size=16, progress=False,
                     spec="shapes:n=20,seed=6")
