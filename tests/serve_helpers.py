"""A running ``vlalign serve`` in a background thread, for the API and browser tests."""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager

import numpy as np
from PIL import Image

from vlalign.serve.server import make_server
from vlalign.serve.service import SearchService


@contextmanager
def running_server(aligner, source, spec):
    service = SearchService(aligner, source, spec, progress=False)
    server = make_server(service, "127.0.0.1", 0)  # port 0: the OS picks a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service, server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def png_bytes(image: np.ndarray) -> bytes:
    """[3, H, W] uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()
