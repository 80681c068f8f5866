import io
import json
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image
from serve_helpers import png_bytes, running_server

from vlalign.api import load
from vlalign.data.specs import build_source
from vlalign.errors import VlalignError
from vlalign.serve.server import make_server
from vlalign.serve.service import MAX_UPLOAD_BYTES

SPEC = "shapes:n=48,seed=3"


@pytest.fixture(scope="module")
def server(trained_tiny_run):
    aligner, source = load(trained_tiny_run), build_source(SPEC)
    with running_server(aligner, source, SPEC) as (service, srv, url):
        yield aligner, source, srv, url, service


def get(url):
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def post(url, data):
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_search_ranks_as_encode(server):
    aligner, source, _, url, _ = server
    status, _, body = get(f"{url}/search?q=a+red+circle&k=5")
    results = json.loads(body)["results"]
    images = [source[i].image for i in range(len(source))]
    sims = aligner.encode_text(["a red circle"]) @ aligner.encode_image(images).t()  # [1, N]
    expected = sims[0].topk(5)
    assert status == 200 and [r["id"] for r in results] == expected.indices.tolist()
    assert [r["score"] for r in results] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert results[0]["key"] == source[results[0]["id"]].key


def test_classify_probabilities_match_encode(server):
    aligner, source, _, url, _ = server
    labels = ["red circle", "blue square", "green star"]
    image = source[2].image
    status, body = post(f"{url}/classify?labels=" + ",".join(l.replace(" ", "+") for l in labels), png_bytes(image))
    assert status == 200
    with torch.inference_mode():
        logits = aligner.model.logit_scale.exp() * aligner.encode_image([image]) @ aligner.encode_text(labels).t()
    expected = dict(zip(labels, logits.softmax(-1)[0].tolist()))
    assert {l["label"]: l["probability"] for l in body["labels"]} == pytest.approx(expected, abs=1e-5)
    assert [l["probability"] for l in body["labels"]] == sorted(expected.values(), reverse=True)


def test_image_endpoint_serves_only_indexed_ids(server):
    _, source, _, url, _ = server
    status, ctype, body = get(f"{url}/image/4")
    assert status == 200 and ctype == "image/png"
    assert (Image.open(io.BytesIO(body)).convert("RGB").size == source[4].image.shape[1:][::-1])
    for bad, code in [("/image/48", 404), ("/image/-1", 404), ("/image/..%2F..%2Fetc%2Fpasswd", 400),
                      ("/etc/passwd", 404), ("/search?q=&k=3", 400), ("/search?q=x&k=0", 400)]:
        status, ctype, body = get(url + bad)
        assert status == code and ctype == "application/json" and json.loads(body)["error"]


def test_bad_uploads_get_clear_4xx(server):
    url = server[3]
    status, body = post(f"{url}/classify?labels=a,b", b"this is not an image")
    assert status == 415 and "not an image" in body["error"]
    status, body = post(f"{url}/classify?labels=a,b", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert status == 413 and str(MAX_UPLOAD_BYTES) in body["error"]
    status, body = post(f"{url}/classify", png_bytes(server[1][0].image))
    assert status == 400 and "label" in body["error"]


def test_port_in_use_is_a_clear_error(server):
    _, _, srv, _, service = server
    port = srv.server_address[1]
    with pytest.raises(VlalignError, match=f"Port {port} .* already in use"):
        make_server(service, "127.0.0.1", port)
