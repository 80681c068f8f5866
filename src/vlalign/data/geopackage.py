"""Polygons from a GeoPackage (an SQLite file) with the standard library only.

A GeoPackage geometry is a small binary header followed by ISO well-known binary (WKB): see the
OGC GeoPackage Encoding Standard 1.3, section 2.1.3 ("GeoPackageBinary"), and OGC Simple Features
(06-103r4) section 8.2 for WKB. Only polygonal geometries are decoded: land cover is polygons.
"""

from __future__ import annotations

import sqlite3
import struct
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Ring = np.ndarray  # [K, 2] float64 (x, y), closed: the last vertex repeats the first
Polygon = list[Ring]  # exterior ring first, then holes

_WKB_POLYGON = 3
_WKB_MULTIPOLYGON = 6
# GeoPackage envelope indicator (flags bits 1-3) -> number of doubles in the envelope.
_ENVELOPE_DOUBLES = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}


@dataclass(frozen=True)
class PolygonLayer:
    """One feature table: ``features[i] = (attribute value, polygons)`` in the layer's CRS."""

    table: str
    epsg: int | None  # None when the CRS is not an EPSG code
    features: list[tuple[str, list[Polygon]]]


def parse_wkb(data: bytes) -> list[Polygon]:
    """Decode a WKB Polygon or MultiPolygon (2D, Z, M or ZM) into polygons of 2D rings."""
    try:
        polygons, end = _read_geometry(memoryview(data), 0)
    except struct.error as error:  # a count or type field cut off by the end of the buffer
        raise ValueError(f"WKB truncated: {error}") from error
    if end != len(data):
        raise ValueError(f"WKB geometry ends at byte {end} but the buffer holds {len(data)} bytes")
    return polygons


def parse_gpkg_geometry(blob: bytes) -> tuple[int, list[Polygon]]:
    """Split a GeoPackageBinary blob into ``(srs_id, polygons)``; an empty geometry gives no polygons."""
    if len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError(f"not a GeoPackage geometry: starts with {bytes(blob[:2])!r}, expected b'GP'")
    flags = blob[3]
    if flags & 0b0010_0000:
        raise ValueError("extended GeoPackage geometries (flags bit 5) are not supported")
    envelope_kind = (flags >> 1) & 0b111
    if envelope_kind not in _ENVELOPE_DOUBLES:
        raise ValueError(f"invalid GeoPackage envelope indicator {envelope_kind} (valid: 0-4)")
    header_order = "<" if flags & 1 else ">"
    (srs_id,) = struct.unpack_from(f"{header_order}i", blob, 4)
    if flags & 0b0001_0000:  # empty geometry
        return srs_id, []
    wkb_start = 8 + 8 * _ENVELOPE_DOUBLES[envelope_kind]
    return srs_id, parse_wkb(blob[wkb_start:])


def read_polygon_layer(path: str | Path, attribute: str, table: str | None = None) -> PolygonLayer:
    """Read every feature of a polygon table with the value of its ``attribute`` column.

    ``table`` may be left out when the file holds a single feature table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GeoPackage {path} not found")
    # Read-only URI: opening a missing or foreign file must not create or modify it.
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        try:
            tables = [
                row[0]
                for row in connection.execute("SELECT table_name FROM gpkg_contents WHERE data_type = 'features'")
            ]
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{path} is not a GeoPackage ({error})") from error
        if table is None:
            if len(tables) != 1:
                raise ValueError(f"{path} holds feature tables {tables}; pass table= one of them")
            table = tables[0]
        elif table not in tables:
            raise ValueError(f"{path} has no feature table {table!r}; it has {tables}")
        column, srs_id = connection.execute(
            "SELECT column_name, srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)
        ).fetchone()
        organisation, code = connection.execute(
            "SELECT organization, organization_coordsys_id FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)
        ).fetchone()
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({_quote(table)})")]
        if attribute not in columns:
            raise ValueError(f"{path}: table {table!r} has no column {attribute!r}; columns are {columns}")
        rows = connection.execute(f"SELECT {_quote(attribute)}, {_quote(column)} FROM {_quote(table)} ORDER BY rowid")
        features = [(str(value), parse_gpkg_geometry(blob)[1]) for value, blob in rows if blob is not None]
    epsg = int(code) if str(organisation).upper() == "EPSG" else None
    return PolygonLayer(table=table, epsg=epsg, features=features)


def polygon_area(polygon: Polygon) -> float:
    """Area of the exterior minus the holes (shoelace formula), in squared CRS units."""

    def ring_area(ring: Ring) -> float:
        x, y = ring[:, 0], ring[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    exterior, *holes = polygon
    return ring_area(exterior) - sum(ring_area(hole) for hole in holes)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _read_geometry(buffer: memoryview, offset: int) -> tuple[list[Polygon], int]:
    """Read one WKB geometry at ``offset``; returns its polygons and the offset just past it."""
    if offset + 5 > len(buffer):
        raise ValueError(f"WKB truncated: geometry header at byte {offset} runs past the end ({len(buffer)} bytes)")
    order_byte = buffer[offset]
    if order_byte not in (0, 1):
        raise ValueError(f"WKB byte-order byte is {order_byte} at byte {offset}; expected 0 (big) or 1 (little)")
    order = "<" if order_byte == 1 else ">"
    (type_code,) = struct.unpack_from(f"{order}I", buffer, offset + 1)
    offset += 5
    # ISO WKB: 1000s digit 1 = Z, 2 = M, 3 = ZM; each adds one ordinate per vertex.
    base_type, dimension_kind = type_code % 1000, type_code // 1000
    if dimension_kind > 3:
        raise ValueError(f"WKB geometry type {type_code} is not ISO WKB (EWKB flags are not supported)")
    ordinates = 2 + (dimension_kind == 1) + (dimension_kind == 2) + 2 * (dimension_kind == 3)
    if base_type == _WKB_POLYGON:
        polygon, offset = _read_polygon(buffer, offset, order, ordinates)
        return [polygon], offset
    if base_type == _WKB_MULTIPOLYGON:
        (count,) = struct.unpack_from(f"{order}I", buffer, offset)
        offset += 4
        polygons = []
        for _ in range(count):
            members, offset = _read_geometry(buffer, offset)  # each member carries its own byte order
            polygons.extend(members)
        return polygons, offset
    raise ValueError(f"WKB geometry type {type_code} is not a Polygon (3) or MultiPolygon (6)")


def _read_polygon(buffer: memoryview, offset: int, order: str, ordinates: int) -> tuple[Polygon, int]:
    (ring_count,) = struct.unpack_from(f"{order}I", buffer, offset)
    offset += 4
    rings = []
    for _ in range(ring_count):
        (vertex_count,) = struct.unpack_from(f"{order}I", buffer, offset)
        offset += 4
        size = vertex_count * ordinates * 8
        if offset + size > len(buffer):
            raise ValueError(f"WKB truncated: ring of {vertex_count} vertices at byte {offset} runs past the end")
        vertices = np.frombuffer(buffer, dtype=f"{order}f8", count=vertex_count * ordinates, offset=offset)
        rings.append(vertices.reshape(vertex_count, ordinates)[:, :2].astype(np.float64))  # [K, 2]
        offset += size
    return rings, offset
