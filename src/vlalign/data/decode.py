"""Bytes to pixels: pictures, ``.npy``/``.npz`` arrays and TIFF stacks, all to ``[C, H, W]`` with every channel kept.

The format is recognised by content, not by file name, so an HTML error page saved as ``.jpg`` is
reported as such. Nothing is forced to RGB: grey stays one channel, alpha is kept, 16-bit and
float pictures keep their dtype. Only colour *encodings* of an RGB picture (palette, CMYK, YCbCr,
LAB, HSV) are turned into RGB, because their channels are not separate measurements.

Array layout rule (``.npy``/``.npz``; TIFF files name their own axes): a 2-D array is one channel;
a 3-D array ``[a, b, c]`` is channel-first ``[C, H, W]`` unless its last axis is strictly smaller
than its first (``[H, W, C]``). When the sample's metadata names n channels, the axis of length n
wins. ``layout="chw"`` or ``"hwc"`` overrides the rule.

Every failure raises ``CorruptSample`` with a short reason, so the loader can skip and count it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image

from vlalign.data.sample import CorruptSample

# Decoding more than this many pixels per channel plane is refused before any pixel data is read:
# a corrupt or hostile header (say 100000 x 100000) must not exhaust memory. 8192 x 8192.
MAX_PIXELS = 8192 * 8192
MAX_CHANNELS = 1024
LAYOUTS = ("auto", "chw", "hwc")

RGB = ("red", "green", "blue")
_GREY_MODES = ("L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 8-, 16-, 32-bit integer and float grey
_MODE_CHANNELS = {**dict.fromkeys(_GREY_MODES, ("grey",)), "LA": ("grey", "alpha"), "RGB": RGB,
                  "RGBA": RGB + ("alpha",)}
# Modes whose channels are an encoding of colour, converted to the plain equivalent.
_CONVERT_MODE = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB",
                 "La": "LA", "RGBa": "RGBA", "PA": "RGBA"}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class Decoded:
    image: np.ndarray  # [C, H, W], native byte order, writable
    channel_names: tuple[str, ...] | None  # named by the format (picture mode, npz entry), else None


def decode_image(data: bytes, source_key: str, layout: str = "auto") -> np.ndarray:
    """Decode any supported image or array file to ``[C, H, W]``; raise ``CorruptSample`` if it cannot be used."""
    return decode(data, source_key, layout).image


def decode(data: bytes, source_key: str, layout: str = "auto", channel_names: tuple[str, ...] | None = None
           ) -> Decoded:
    """Like ``decode_image`` but also returns channel names the file itself carries.

    ``channel_names`` (from the sample's metadata) only steers the layout rule for arrays.
    """
    if len(data) == 0:
        raise CorruptSample("empty-file", source_key, "zero bytes")
    head = bytes(data[:8])
    n_named = len(channel_names) if channel_names else None
    try:
        if head.startswith(_NPY_MAGIC):
            return Decoded(_read_npy(io.BytesIO(data), source_key, layout, n_named), None)
        if head.startswith(_ZIP_MAGIC):
            return _read_npz(data, source_key, layout, n_named)
        if head[:4] in _TIFF_MAGICS:
            return _read_tiff(data, source_key)
        return _read_picture(data, source_key)
    except CorruptSample:
        raise
    except Exception as err:  # noqa: BLE001 -- a malformed file can make any decoder fail in any way
        raise CorruptSample(_reason_of(err), source_key, f"{type(err).__name__}: {err}") from None


def from_array(array: np.ndarray, source_key: str, layout: str = "auto", n_named: int | None = None) -> np.ndarray:
    """An in-memory array (e.g. a Hugging Face Array3D cell) to ``[C, H, W]`` by the layout rule."""
    _check_dtype(array.dtype, source_key)
    _check_size(_layout_shape(array.shape, layout, n_named, source_key), source_key)
    return _native(_to_chw(array, layout, n_named, source_key))


def default_channel_names(count: int) -> tuple[str, ...]:
    """Names for channels nothing named: ``ch0``, ``ch1``, ..."""
    return tuple(f"ch{i}" for i in range(count))


def _reason_of(err: Exception) -> str:
    text = str(err).lower()
    if isinstance(err, EOFError) or "truncat" in text or "end of" in text or "premature" in text:
        return "truncated-image"
    return "undecodable-image"


def _looks_like_markup(data: bytes) -> bool:
    head = bytes(data[:256]).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<svg", b"{", b"["))


# ---------------------------------------------------------------- pictures (Pillow)


def _read_picture(data: bytes, key: str) -> Decoded:
    try:
        picture = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise CorruptSample("oversized-image", key, str(err)) from None
    except Image.UnidentifiedImageError:
        detail = "looks like an HTML/text document, e.g. an error page saved under an image name" \
            if _looks_like_markup(data) else f"unknown format, first bytes {bytes(data[:8])!r}"
        raise CorruptSample("not-an-image", key, detail) from None
    width, height = picture.size
    _check_size((1, height, width), key)
    if picture.format == "TIFF" and getattr(picture, "n_frames", 1) > 1:
        return Decoded(_stack_pages(picture, key), None)
    return _picture_array(picture)


def _picture_array(picture: Image.Image) -> Decoded:
    if picture.mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    elif picture.mode in _CONVERT_MODE:
        picture = picture.convert(_CONVERT_MODE[picture.mode])
    array = np.asarray(picture)  # [H, W] or [H, W, C]; decoding happens here
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return Decoded(_native(array), _MODE_CHANNELS.get(picture.mode))


def _stack_pages(picture: Image.Image, key: str) -> np.ndarray:
    """A multi-page TIFF (an ImageJ or microscope stack): every page's channels, in page order."""
    planes = []
    for page in range(picture.n_frames):
        picture.seek(page)
        planes.append(_picture_array(picture).image)
        if planes[-1].shape[1:] != planes[0].shape[1:] or planes[-1].dtype != planes[0].dtype:
            raise CorruptSample("undecodable-image", key, f"TIFF page {page} is {planes[-1].dtype} "
                                f"{list(planes[-1].shape[1:])}, page 0 {planes[0].dtype} {list(planes[0].shape[1:])}")
    stack = np.concatenate(planes)
    _check_size(stack.shape, key)
    return stack


# ---------------------------------------------------------------- TIFF (tifffile: any sample count, planar or not)


def _read_tiff(data: bytes, key: str) -> Decoded:
    """tifffile reads what Pillow cannot (13-band or planar TIFF); Pillow (libtiff) reads the LZW or
    JPEG compression that tifffile leaves to the optional ``imagecodecs`` package."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            shape, axes = series.shape, series.axes
            _check_size(_tiff_chw_shape(shape, axes), key)
            photometric = series.pages[0].photometric
            array = series.asarray()
    except CorruptSample:
        raise
    except Exception as tiff_error:  # noqa: BLE001 -- as above; Pillow gets its chance next
        try:
            return _read_picture(data, key)
        except CorruptSample as pillow_error:
            reason = "truncated-image" if pillow_error.reason == "truncated-image" else _reason_of(tiff_error)
            raise CorruptSample(reason, key, f"tifffile: {tiff_error}; Pillow: {pillow_error.detail}") from None
    image = _native(_tiff_to_chw(array, axes))
    names = None
    if image.shape[0] == 1:
        names = ("grey",)
    elif photometric == tifffile.PHOTOMETRIC.RGB and image.shape[0] in (3, 4):
        names = _MODE_CHANNELS["RGB" if image.shape[0] == 3 else "RGBA"]
    return Decoded(image, names)


def _tiff_chw_shape(shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    planes = int(np.prod([n for n, a in zip(shape, axes) if a not in "YX"]))
    return planes, shape[axes.index("Y")], shape[axes.index("X")]


def _tiff_to_chw(array: np.ndarray, axes: str) -> np.ndarray:
    """Every plane that is not Y or X (samples, pages, channels, z) becomes a channel, in file order."""
    others = [i for i, a in enumerate(axes) if a not in "YX"]
    moved = array.transpose(others + [axes.index("Y"), axes.index("X")])
    return moved.reshape(-1, *moved.shape[-2:])


# ---------------------------------------------------------------- arrays


def _read_npy(stream, key: str, layout: str, n_named: int | None) -> np.ndarray:
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    _check_dtype(dtype, key)
    _check_size(_layout_shape(shape, layout, n_named, key), key)
    count = int(np.prod(shape))
    payload = stream.read(count * dtype.itemsize)
    if len(payload) < count * dtype.itemsize:
        raise CorruptSample("truncated-image", key, f".npy holds {len(payload)} of {count * dtype.itemsize} data bytes")
    array = np.frombuffer(payload, dtype=dtype, count=count)
    array = array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)
    return _native(_to_chw(array, layout, n_named, key))


def _read_npz(data: bytes, key: str, layout: str, n_named: int | None) -> Decoded:
    """An ``.npz`` with one array, or with ``image`` plus optional ``channel_names`` (an array of str)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        channel_names = None
        if "channel_names" in names:
            with archive.open("channel_names.npy") as f:
                raw = np.lib.format.read_array(f, allow_pickle=False)
            channel_names = tuple(str(n) for n in raw.reshape(-1))
            names.remove("channel_names")
        if "image" in names:
            chosen = "image"
        elif len(names) == 1:
            chosen = names[0]
        else:
            raise CorruptSample("undecodable-image", key, f".npz holds arrays {names}: name the pixels 'image'")
        with archive.open(chosen + ".npy") as f:
            stream = io.BytesIO(f.read())
    hint = len(channel_names) if channel_names else n_named
    image = _read_npy(stream, key, layout, hint)
    if channel_names and len(channel_names) != image.shape[0]:
        raise CorruptSample("undecodable-image", key, f".npz names {len(channel_names)} channels for "
                            f"an image of {image.shape[0]}")
    return Decoded(image, channel_names)


def _check_dtype(dtype: np.dtype, key: str) -> None:
    if dtype.kind not in "biuf":
        raise CorruptSample("undecodable-image", key, f"array dtype {dtype} is not numeric pixels")


def _layout_shape(shape: tuple[int, ...], layout: str, n_named: int | None, key: str) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise CorruptSample("undecodable-image", key, f"array of shape {list(shape)}: expected [H, W], [C, H, W] "
                            "or [H, W, C]")
    if _channels_last(shape, layout, n_named):
        return shape[2], shape[0], shape[1]
    return tuple(shape)


def _channels_last(shape: tuple[int, ...], layout: str, n_named: int | None) -> bool:
    if layout != "auto":
        return layout == "hwc"
    if n_named is not None and (shape[0] == n_named) != (shape[2] == n_named):
        return shape[2] == n_named
    return shape[2] < shape[0]


def _to_chw(array: np.ndarray, layout: str, n_named: int | None, key: str) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    _layout_shape(array.shape, layout, n_named, key)
    return array.transpose(2, 0, 1) if _channels_last(array.shape, layout, n_named) else array


def _check_size(chw: tuple[int, int, int], key: str) -> None:
    channels, height, width = chw
    if height * width > MAX_PIXELS or channels > MAX_CHANNELS:
        raise CorruptSample("oversized-image", key, f"{channels} x {height} x {width} exceeds the limit of "
                            f"{MAX_PIXELS} pixels and {MAX_CHANNELS} channels (vlalign.data.decode.MAX_PIXELS)")
    if height == 0 or width == 0 or channels == 0:
        raise CorruptSample("undecodable-image", key, f"empty image {channels} x {height} x {width}")


def _native(array: np.ndarray) -> np.ndarray:
    """Native byte order, C-contiguous, writable (torch.from_numpy needs the first and warns without the last)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
