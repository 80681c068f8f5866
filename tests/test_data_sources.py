"""Decoding, the file-backed sources (wds, csv, folder, hf), multi-channel arrays, convert, inspect, cache."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from shard_fixtures import HTML, jpeg_bytes, npy_bytes, oversized_png, png_bytes, write_tar
from vlalign.cli import main
from vlalign.data import decode as decode_module
from vlalign.data.cache import DecodedCache
from vlalign.data.convert import convert
from vlalign.data.decode import decode, decode_image
from vlalign.data.inspect import inspect_source
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import build_source
from vlalign.data.transforms import resize_square
from vlalign.errors import DataError

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None
needs_pyarrow = pytest.mark.skipif(not HAS_PYARROW, reason="needs `pip install pyarrow`")
RNG = np.random.default_rng(0)


def pixels(*shape, dtype=np.uint8) -> np.ndarray:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is None:
        return RNG.normal(size=shape).astype(dtype)
    return RNG.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def all_samples(source) -> list:
    return [source[i] for i in range(len(source))]


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("mode, fmt, channels, dtype", [
    ("L", "PNG", ("grey",), np.uint8),
    ("LA", "PNG", ("grey", "alpha"), np.uint8),
    ("RGB", "PNG", ("red", "green", "blue"), np.uint8),
    ("RGBA", "PNG", ("red", "green", "blue", "alpha"), np.uint8),
    ("I;16", "PNG", ("grey",), np.uint16),
    ("F", "TIFF", ("grey",), np.float32),
    ("RGB", "WEBP", ("red", "green", "blue"), np.uint8),
])
def test_pictures_keep_every_channel_and_their_dtype(mode, fmt, channels, dtype):
    count = len(channels)
    array = pixels(5, 7, count, dtype=np.uint8) if dtype == np.uint8 else pixels(5, 7, dtype=dtype)
    image = Image.fromarray(array[..., 0] if count == 1 and array.ndim == 3 else array)
    assert image.mode == mode
    decoded = decode(encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})), "k")
    assert decoded.image.dtype == dtype and decoded.image.shape == (count, 5, 7)
    assert decoded.channel_names == channels
    expected = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded.image, expected.reshape(decoded.image.shape))


def test_colour_encodings_become_rgb():
    rgb = pixels(6, 6, 3)
    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(decode_image(encode(palette, "PNG"), "k"),
                                  np.asarray(palette.convert("RGB")).transpose(2, 0, 1))
    cmyk = decode(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "k")
    assert cmyk.image.shape == (3, 6, 6) and cmyk.channel_names == ("red", "green", "blue")


@pytest.mark.parametrize("data, reason", [
    (b"", "empty-file"),
    (HTML, "not-an-image"),
    (b"\x00\x01garbage bytes that are no format at all", "not-an-image"),
    (jpeg_bytes(pixels(32, 32, 3))[:300], "truncated-image"),
    (png_bytes(pixels(32, 32, 3))[:200], "truncated-image"),
    (oversized_png(), "oversized-image"),  # past Pillow's own decompression-bomb limit
    (oversized_png(9000, 9000), "oversized-image"),  # past ours only: 81M pixels > 8192^2
    (npy_bytes(pixels(3, 8, 8))[:-10], "truncated-image"),
    (npy_bytes(np.array([["a"]])), "undecodable-image"),
])
def test_unusable_bytes_raise_corrupt_sample_with_a_reason(data, reason):
    with pytest.raises(CorruptSample) as caught:
        decode_image(data, "shard.tar/key")
    assert caught.value.reason == reason and caught.value.source == "shard.tar/key"
    if data == HTML:
        assert "HTML" in caught.value.detail


def test_pixel_limit_is_checked_before_pixel_data_is_read(monkeypatch):
    monkeypatch.setattr(decode_module, "MAX_PIXELS", 10 * 10)
    assert decode_image(png_bytes(pixels(10, 10)), "k").shape == (1, 10, 10)
    for data in (png_bytes(pixels(10, 11)), npy_bytes(pixels(2, 10, 11))):
        with pytest.raises(CorruptSample, match="oversized-image"):
            decode_image(data, "k")


# ---------------------------------------------------------------- arrays: npy, npz, tif; dtypes and layouts

ARRAY_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64, np.dtype(">u2")]


@pytest.mark.parametrize("dtype", ARRAY_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_arrays_decode_by_the_layout_rule(dtype, layout):
    chw = pixels(5, 6, 9, dtype=np.dtype(dtype).newbyteorder("=")).astype(dtype)  # 5 channels of 6 x 9
    stored = chw if layout == "chw" else chw.transpose(1, 2, 0)
    for data in (npy_bytes(stored), _npz(image=stored, channel_names=np.array(list("abcde")))):
        decoded = decode(data, "k")
        assert decoded.image.shape == (5, 6, 9) and decoded.image.dtype == np.dtype(dtype).newbyteorder("=")
        assert decoded.image.dtype.isnative and decoded.image.flags.writeable
        np.testing.assert_array_equal(decoded.image, chw)
    assert decode(_npz(image=stored, channel_names=np.array(list("abcde"))), "k").channel_names == tuple("abcde")


def test_ambiguous_shapes_follow_metadata_or_the_explicit_option():
    hwc = pixels(4, 6, 4)  # 4 x 6 with 4 channels: the rule alone reads [C=4, H=6, W=4]
    assert decode_image(npy_bytes(hwc), "k").shape == (4, 6, 4)
    assert decode_image(npy_bytes(hwc), "k", layout="hwc").shape == (4, 4, 6)
    chw_names = decode(npy_bytes(pixels(3, 6, 7)), "k", channel_names=("a", "b", "c"))
    hwc_names = decode(npy_bytes(pixels(7, 6, 3)), "k", channel_names=("a", "b", "c"))
    assert chw_names.image.shape == (3, 6, 7) and hwc_names.image.shape == (3, 7, 6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32], ids=str)
def test_tiff_any_band_count_planar_interleaved_or_paged(dtype):
    chw = pixels(13, 6, 8, dtype=dtype)
    planar, interleaved, paged = io.BytesIO(), io.BytesIO(), io.BytesIO()
    tifffile.imwrite(planar, chw, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(interleaved, chw.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")
    Image.fromarray(chw[0]).save(paged, "TIFF", save_all=True, append_images=[Image.fromarray(c) for c in chw[1:]]) \
        if dtype != np.uint16 else tifffile.imwrite(paged, chw[:, None], photometric="minisblack")
    for stream in (planar, interleaved, paged):
        image = decode_image(stream.getvalue(), "k")
        assert image.dtype == dtype
        np.testing.assert_array_equal(image, chw)


def test_lzw_tiff_falls_back_to_pillow():
    rgb = pixels(6, 8, 3)
    data = encode(Image.fromarray(rgb), "TIFF", compression="tiff_lzw")
    decoded = decode(data, "k")  # tifffile needs imagecodecs for LZW; Pillow's libtiff reads it
    np.testing.assert_array_equal(decoded.image, rgb.transpose(2, 0, 1))
    assert decoded.channel_names == ("red", "green", "blue")


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_multichannel_sources_give_shape_dtype_and_channel_names(tmp_path):
    bands = ("B02", "B03", "B04", "B08", "B11")
    arrays = [pixels(5, 6, 6, dtype=np.uint16), pixels(6, 6, 5, dtype=np.uint16).astype(">u2"),
              pixels(5, 6, 6, dtype=np.uint16)]
    # csv: .npy (one channel-first, one channel-last) with .json sidecars, and a planar TIFF named by the option
    np.save(tmp_path / "a.npy", arrays[0])
    np.save(tmp_path / "b.npy", arrays[1])
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"channel_names": bands}))
    tifffile.imwrite(tmp_path / "c.tif", arrays[2], photometric="minisblack", planarconfig="separate")
    _write_csv(tmp_path / "bands.csv", [("a.npy", "first"), ("b.npy", "second"), ("c.tif", "third")])
    expected = [arrays[0], arrays[1].transpose(2, 0, 1).astype(np.uint16), arrays[2]]
    source = build_source(f"csv:{tmp_path / 'bands.csv'},channels={'+'.join(bands)}")
    assert source.channel_names == bands and source.dtype == np.uint16
    for sample, want in zip(all_samples(source), expected):
        assert sample.channel_names == bands and sample.image.dtype == np.uint16
        np.testing.assert_array_equal(sample.image, want)
    # picking bands by name, in the order asked for
    rgb_like = build_source(f"csv:{tmp_path / 'bands.csv'},channels=B04+B03+B02")
    np.testing.assert_array_equal(rgb_like[0].image, arrays[0][[2, 1, 0]])
    # wds: .npy + .json channel names; float data
    floats = pixels(7, 4, 4, dtype=np.float32)
    write_tar(tmp_path / "f.tar", [("x.npy", npy_bytes(floats)), ("x.txt", b"float bands"),
                                   ("x.json", json.dumps({"channel_names": list("abcdefg")}).encode())])
    sample = build_source(f"wds:{tmp_path / 'f.tar'}")[0]
    assert sample.channel_names == tuple("abcdefg") and sample.image.dtype == np.float32
    np.testing.assert_array_equal(sample.image, floats)


def test_channel_conformance_repeats_grey_picks_by_name_and_skips_mismatches(tmp_path):
    rgb, grey, rgba, five = pixels(6, 6, 3), pixels(6, 6), pixels(6, 6, 4), pixels(5, 6, 6)
    for name, array in (("rgb.png", rgb), ("grey.png", grey), ("rgba.png", rgba)):
        Image.fromarray(array).save(tmp_path / name)
    np.save(tmp_path / "five.npy", five)
    _write_csv(tmp_path / "mix.csv", [("rgb.png", "a"), ("grey.png", "b"), ("rgba.png", "c"), ("five.npy", "d")])
    source = build_source(f"csv:{tmp_path / 'mix.csv'}")
    assert source.channel_names == ("red", "green", "blue")
    np.testing.assert_array_equal(source[1].image, np.repeat(grey[None], 3, axis=0))
    np.testing.assert_array_equal(source[2].image, rgba[..., :3].transpose(2, 0, 1))
    with pytest.raises(CorruptSample) as caught:
        source[3]
    assert caught.value.reason == "channel-mismatch" and "5 unnamed" in caught.value.detail
    Image.fromarray(pixels(6, 6, dtype=np.uint16)).save(tmp_path / "deep.png")
    _write_csv(tmp_path / "depths.csv", [("grey.png", "a"), ("deep.png", "b")])
    with pytest.raises(CorruptSample, match="dtype-mismatch"):
        build_source(f"csv:{tmp_path / 'depths.csv'}")[1]


# ---------------------------------------------------------------- sources and their specs


def _write_csv(path: Path, rows: list[tuple], header=("image", "caption"), delimiter=",") -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def make_picture_files(root: Path, n: int = 12) -> list[tuple[str, str, str, np.ndarray]]:
    """n PNGs in two class folders; returns (relative path, caption, class, pixels [H, W, 3])."""
    rows = []
    for i in range(n):
        cls = ["sea_lion", "zebra"][i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        array = pixels(5 + i % 3, 6, 3)
        Image.fromarray(array).save(root / cls / f"{i:02d}.png")
        rows.append((f"{cls}/{i:02d}.png", f"picture number {i}", cls.replace("_", " "), array))
    return rows


def test_csv_tsv_and_folder_sources(tmp_path):
    rows = make_picture_files(tmp_path / "pics")
    _write_csv(tmp_path / "pics" / "pairs.tsv", [(p, c, k) for p, c, k, _ in rows], ("image", "caption", "label"), "\t")
    _write_csv(tmp_path / "other.csv", [(f"pics/{p}", c) for p, c, _, _ in rows], ("filepath", "title"))
    tsv = build_source(f"csv:{tmp_path / 'pics' / 'pairs.tsv'}")
    renamed = build_source(f"csv:{tmp_path / 'other.csv'},image=filepath,caption=title")
    folder = build_source(f"folder:{tmp_path / 'pics'},template=a photo of a {{c}}|a picture of a {{c}}")
    assert tsv.classes == folder.classes == ["sea lion", "zebra"]
    folder_order = sorted(range(len(rows)), key=lambda i: (rows[i][2], rows[i][0]))
    for position, (_, caption, cls, array) in enumerate(rows):
        for sample in (tsv[position], renamed[position]):
            np.testing.assert_array_equal(sample.image, array.transpose(2, 0, 1))
            assert sample.caption == caption
        assert tsv[position].label == tsv.classes.index(cls) and renamed[position].label is None
        assert tsv[position].key == f"{tmp_path / 'pics' / 'pairs.tsv'}#{position + 2}"
        f = folder[folder_order.index(position)]
        np.testing.assert_array_equal(f.image, array.transpose(2, 0, 1))
        assert f.caption in (f"a photo of a {cls}", f"a picture of a {cls}") and f.label == folder.classes.index(cls)
    (tmp_path / "pics" / "zebra" / "01.txt").write_text("a zebra with its own caption")
    assert "a zebra with its own caption" in build_source(f"folder:{tmp_path / 'pics'}").captions()


def test_spec_errors_name_the_problem(tmp_path, monkeypatch):
    _write_csv(tmp_path / "bad.csv", [("x.png", "y")], ("path", "text"))
    with pytest.raises(DataError, match="no column 'image'.*columns: \\['path', 'text'\\]"):
        build_source(f"csv:{tmp_path / 'bad.csv'}")
    with pytest.raises(DataError, match="does not exist"):
        build_source(f"csv:{tmp_path / 'none.csv'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        build_source(f"folder:{tmp_path / 'flat'}")
    with pytest.raises(DataError, match="option 'layout' expects auto, chw or hwc"):
        build_source(f"csv:{tmp_path / 'bad.csv'},layout=whc")
    with pytest.raises(DataError, match="compressed shards"):
        build_source(f"wds:{tmp_path}/{{0..3}}.tar.gz")
    _write_csv(tmp_path / "broken.csv", [("missing.png", "gone")])
    with pytest.raises(DataError, match="none of its first 1 samples can be read: missing-image"):
        build_source(f"csv:{tmp_path / 'broken.csv'}")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the optional extra were not installed
    with pytest.raises(DataError, match="needs the pyarrow package: `pip install pyarrow`"):
        build_source(f"hf:{tmp_path}")


def test_wds_groups_members_by_key_like_webdataset(tmp_path):
    import webdataset

    red = pixels(4, 4, 3)
    members = [("a/b/s1.png", png_bytes(red)), ("a/b/s1.txt", b"first"), ("a/b/s1.cls", b"3"),
               ("s2.seg.png", png_bytes(red)), ("s2.jpg", jpeg_bytes(red)), ("s2.json", b'{"caption": "second"}')]
    write_tar(tmp_path / "s.tar", members)
    source = build_source(f"wds:{tmp_path / 's.tar'}")
    ours = {s.key.split(".tar/")[1]: s for s in all_samples(source)}
    theirs = {s["__key__"]: s for s in webdataset.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)}
    assert set(ours) == set(theirs) == {"a/b/s1", "s2"}
    assert ours["a/b/s1"].label == 3 and ours["s2"].caption == "second"
    np.testing.assert_array_equal(ours["a/b/s1"].image, red.transpose(2, 0, 1))
    assert ours["s2"].image.shape == (3, 4, 4)  # the .jpg; "seg.png" is another extension


# ---------------------------------------------------------------- convert round trips


def assert_same_samples(original, converted) -> None:
    """``converted`` holds the readable samples of ``original``, in order, bit for bit."""
    readable = []
    for i in range(len(original)):
        try:
            sample = original[i]
        except CorruptSample:
            continue
        if sample.caption.strip():
            readable.append(sample)
    assert len(converted) == len(readable)
    assert converted.channel_names == tuple(original.channel_names)
    assert converted.classes == original.classes
    for a, b in zip(readable, all_samples(converted)):
        assert b.image.dtype == a.image.dtype
        np.testing.assert_array_equal(b.image, a.image)
        assert (b.caption, b.label, b.channel_names) == (a.caption, a.label, a.channel_names)
        assert json.loads(_member(b.key, "json"))["source_key"] == a.key


def _member(key: str, ext: str) -> bytes:
    shard, name = key.split(".tar/")
    with tarfile.open(shard + ".tar") as tar:
        return tar.extractfile(f"{name}.{ext}").read()


def round_trip(spec: str, out: Path):
    original = build_source(spec)
    report = convert(original, out, shard_size=5)
    converted = build_source(f"wds:{report.index}")
    assert_same_samples(original, converted)
    return original, converted, report


def test_convert_round_trips_every_source(tmp_path):
    rows = make_picture_files(tmp_path / "pics")
    _write_csv(tmp_path / "pics" / "pairs.csv", [(p, c, k) for p, c, k, _ in rows], ("image", "caption", "label"))
    sources = ["shapes:n=12,seed=3", "shapes:n=6,seed=1,channels=stains", f"csv:{tmp_path / 'pics' / 'pairs.csv'}",
               f"folder:{tmp_path / 'pics'}"]
    for number, spec in enumerate(sources):
        round_trip(spec, tmp_path / f"out{number}")
    # shards to shards, through the brace pattern, keeps everything but the class names (only the index has them)
    again = convert(build_source(f"wds:{tmp_path}/out2/{{000000..000002}}.tar"), tmp_path / "again")
    assert len(build_source(f"wds:{again.index}")) == len(rows)


def test_convert_writes_arrays_as_npy_and_skips_corrupt_samples(tmp_path):
    bands = [pixels(6, 5, 5, dtype=np.uint16) for _ in range(4)]
    for i, array in enumerate(bands):
        np.save(tmp_path / f"{i}.npy", array)
    (tmp_path / "bad.npy").write_bytes(HTML)
    rows = [(f"{i}.npy", f"bands {i}") for i in range(4)] + [("bad.npy", "x"), ("2.npy", "")]
    _write_csv(tmp_path / "bands.csv", rows)
    original, converted, report = round_trip(f"csv:{tmp_path / 'bands.csv'},channels=a+b+c+d+e+f", tmp_path / "out")
    assert dict(report.skipped) == {"not-an-image": 1, "empty-caption": 1} and report.written == 4
    assert _member(converted[0].key, "npy")[:6] == b"\x93NUMPY"
    index = json.loads(report.index.read_text())
    stacked = np.stack(bands).astype(np.float64)  # [N, C, H, W]
    np.testing.assert_allclose(index["vlalign"]["channel_stats"]["mean"], stacked.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(converted.normalization[1], stacked.std(axis=(0, 2, 3)))
    np.testing.assert_allclose(original.normalization[0], stacked.mean(axis=(0, 2, 3)))  # estimated, all 4 samples
    with pytest.raises(DataError, match="already holds shards"):
        convert(original, tmp_path / "out")


@needs_pyarrow
def test_hf_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pixels(4, 5, 3) for _ in range(7)]
    table = pa.table({"image": [{"bytes": png_bytes(a), "path": None} for a in arrays],
                      "text": [f"pair {i}" for i in range(7)], "label": [i % 2 for i in range(7)]})
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"},
                "label": {"names": ["cat", "dog"], "_type": "ClassLabel"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 4), tmp_path / "pq" / "data" / "train-00000-of-00002.parquet", row_group_size=2)
    pq.write_table(table.slice(4), tmp_path / "pq" / "data" / "train-00001-of-00002.parquet", row_group_size=2)
    original, converted, _ = round_trip(f"hf:{tmp_path / 'pq'},split=train", tmp_path / "out")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(original))[6].image, original[6].image)
    assert converted.classes == ["cat", "dog"] and [s.label for s in all_samples(converted)] == [0, 1] * 3 + [0]
    np.testing.assert_array_equal(converted[5].image, arrays[5].transpose(2, 0, 1))


@pytest.mark.skipif(not HAS_DATASETS, reason="needs `pip install datasets` (writes the real save_to_disk format)")
def test_hf_save_to_disk_folder_round_trip(tmp_path):
    import datasets

    arrays = [pixels(4, 5, 3) for _ in range(5)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in arrays], "caption": [f"pair {i}" for i in range(5)]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(tmp_path / "saved")
    _, converted, _ = round_trip(f"hf:{tmp_path / 'saved'},split=test", tmp_path / "out")
    np.testing.assert_array_equal(converted[1].image, arrays[1].transpose(2, 0, 1))
    assert len(build_source(f"hf:{tmp_path / 'saved'}")) == 5  # the train split by default


# ---------------------------------------------------------------- CLI, inspect, cache


def test_cli_convert_and_inspect(tmp_path, capsys):
    make_picture_files(tmp_path / "pics", n=6)
    assert main(["data", "convert", f"folder:{tmp_path / 'pics'}", "--to", str(tmp_path / "out")]) == 0
    assert f"wds:{tmp_path / 'out' / 'shards.json'}" in capsys.readouterr().out
    shard = tmp_path / "out" / "000000.tar"
    shard.write_bytes(shard.read_bytes()[:10_000])  # about two of the six samples survive
    assert main(["data", "inspect", f"wds:{tmp_path / 'out' / 'shards.json'}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 6 and report["readable"] >= 1
    assert report["skipped"] == {"truncated-shard": 6 - report["readable"]}  # every lost sample is counted
    assert report["notes"][0].startswith(f"damaged shard {shard}")
    assert report["caption_words"]["max"] == 6.0  # "a photo of a sea lion"
    assert main(["data", "inspect", "wds:/nonexistent/{0..1}.tar"]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_inspect_statistics_match_numpy(tmp_path):
    rows = make_picture_files(tmp_path / "pics", n=8)
    report = inspect_source(build_source(f"folder:{tmp_path / 'pics'}"))
    flat = np.concatenate([a.reshape(-1, 3) for *_, a in rows]).astype(np.float64)
    np.testing.assert_allclose(report.channel_mean, flat.mean(axis=0))
    np.testing.assert_allclose(report.channel_std, flat.std(axis=0))
    assert report.sizes == {"5x6": 3, "6x6": 3, "7x6": 2} and report.label_counts == {"sea lion": 4, "zebra": 4}


def test_decoded_cache_matches_the_source_and_is_reused(tmp_path):
    rows = make_picture_files(tmp_path / "pics", n=9)
    (tmp_path / "pics" / "zebra" / "99.png").write_bytes(HTML)
    source = build_source(f"folder:{tmp_path / 'pics'}")
    cached = DecodedCache(source, tmp_path / "cache", image_size=4, num_workers=0)
    assert len(cached) == len(source) == len(rows) + 1
    for i in range(len(source)):
        try:
            sample = source[i]
        except CorruptSample as bad:
            with pytest.raises(CorruptSample) as again:
                cached[i]
            assert bad.reason == "not-an-image"
            assert (again.value.reason, again.value.source, again.value.detail) == (bad.reason, bad.source, bad.detail)
            continue
        hit = cached[i]
        assert (hit.key, hit.caption, hit.label) == (sample.key, sample.caption, sample.label)
        exact = resize_square(torch.from_numpy(sample.image).float(), 4).numpy()
        assert hit.image.dtype == np.uint8 and np.abs(hit.image - exact).max() <= 0.5 + 1e-4
    again = pickle.loads(pickle.dumps(cached))  # as a spawned worker receives it: the map is reopened
    assert isinstance(again.images, np.memmap) and np.array_equal(again[0].image, cached[0].image)
    images = cached.folder / "images.npy"
    inode = images.stat().st_ino
    assert DecodedCache(source, tmp_path / "cache", image_size=4).folder == cached.folder
    assert images.stat().st_ino == inode  # reused, not rebuilt
    np.save(tmp_path / "u16.npy", pixels(2, 4, 4, dtype=np.uint16))
    _write_csv(tmp_path / "u16.csv", [("u16.npy", "deep")])
    with pytest.raises(DataError, match="8-bit"):
        DecodedCache(build_source(f"csv:{tmp_path / 'u16.csv'}"), tmp_path / "cache", 4)


def test_training_setup_reads_user_data_through_the_cache(tmp_path, tiny_cfg):
    from vlalign.train.setup import build_components

    make_picture_files(tmp_path / "pics", n=8)
    tiny_cfg.data.train, tiny_cfg.data.batch_size = f"folder:{tmp_path / 'pics'}", 4
    tiny_cfg.data.cache_dir = str(tmp_path / "cache")
    parts = build_components(tiny_cfg, tmp_path / "run")
    batch = next(iter(parts.loader))
    size = tiny_cfg.data.image_size
    assert batch["images"].shape == (4, 3, size, size) and len(list((tmp_path / "cache").iterdir())) == 1
    assert set(batch["captions"]) <= {"a photo of a sea lion", "a photo of a zebra"}
