"""What a MetaImage (``.mha``/``.mhd``) header promises, checked against the data before SimpleITK reads it.

SimpleITK (ITK's MetaIO) handles a header that does not fit its data badly in both directions: too few
bytes for ``DimSize`` × ``ElementType`` (a wrong header, a truncated file) fail with "File cannot be read
... Reason: No such file or directory" for a file that exists, after MetaIO has printed its own lines on
stderr; a compressed file whose ``DimSize`` asks for more voxels than it holds reads without complaint,
the rest of the volume invented. Counting the bytes first answers in one line what is wrong.
:func:`radmtl.data.io.read_volume` asks this module before SimpleITK opens a MetaImage.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

# Bytes per element of MetaIO's element types (metaTypes.h).
ELEMENT_BYTES = {
    "MET_ASCII_CHAR": 1, "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_HEADER_LIMIT = 1 << 16  # a MetaImage header is a few hundred bytes of text
_CHUNK = 1 << 20
_FIX = "re-export the image, or correct DimSize/ElementType in its header to what the data holds"


def stored_metaimage_problem(path: Path) -> tuple[str, str] | None:
    """(what, fix) when the header of the MetaImage ``path`` does not fit its voxel data; None when it does,
    or when the header is one this check does not cover (SimpleITK then has its say)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_LIMIT)
    except OSError:
        return None
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            return ("the MetaImage header has a line without 'key = value' before ElementDataFile", _FIX)
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return ("the MetaImage header has no ElementDataFile line (the header is cut short or not MetaImage)",
                _FIX)
    dims = fields.get("DimSize", "").split()
    if not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
        return (f"the MetaImage header's DimSize {fields.get('DimSize', '(missing)')!r} is not a list of positive "
                "whole numbers", _FIX)
    ndims = fields.get("NDims")
    if ndims is not None and ndims != str(len(dims)):
        return (f"the MetaImage header says NDims = {ndims} but DimSize has {len(dims)} values ({' '.join(dims)})",
                _FIX)
    if fields.get("BinaryData", "True").lower() == "false":
        return None  # voxels written as text: not counted here
    element = fields.get("ElementType", "")
    if element.endswith("_ARRAY"):  # a vector pixel: the element type of its channels
        element = element[: -len("_ARRAY")]
    if element not in ELEMENT_BYTES:
        return (f"the MetaImage header's ElementType {element or '(missing)'!r} is not a voxel type radmtl reads "
                "(MET_UCHAR, MET_SHORT, MET_FLOAT, MET_DOUBLE, ...)", _FIX)
    channels = fields.get("ElementNumberOfChannels", "1")
    if not channels.isdigit() or int(channels) < 1:
        return (f"the MetaImage header's ElementNumberOfChannels {channels!r} is not a positive whole number", _FIX)
    data_file = fields["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        data, start = path, offset
    elif " " in data_file or data_file.upper().startswith("LIST") or "%" in data_file:
        return None  # a file list or a pattern: several data files, not counted here
    else:
        data, start = path.parent / data_file, 0
        if not data.is_file():
            return (f"the MetaImage header's data file {data} does not exist", "put the data file beside the "
                    "header, or correct ElementDataFile")
    if fields.get("HeaderSize", "0") not in ("0", ""):
        return None  # bytes to skip inside the data file: left to SimpleITK
    expected = math.prod(int(d) for d in dims) * int(channels) * ELEMENT_BYTES[element]
    promise = (f"DimSize {' '.join(dims)} of {element} ({ELEMENT_BYTES[element]} bytes"
               + (f", {channels} channels" if channels != "1" else "") + f") needs {expected} bytes")
    if fields.get("CompressedData", "False").lower() == "true":
        found = _inflated_size(data, start)
        if found is None:
            return (f"the compressed voxel data is corrupt or truncated ({promise})", "re-export the image")
        what = "decompress to"
    else:
        found = data.stat().st_size - start
        what = "hold"
    if found != expected:
        return (f"the header does not fit the voxel data: {promise}, the data {what} {found} "
                "(a wrong DimSize or ElementType, or a truncated file)", _FIX)
    return None


def _inflated_size(path: Path, start: int) -> int | None:
    """The size of the zlib (or gzip) stream from ``start`` of ``path`` once inflated; None when it is
    corrupt or ends early. Inflated a chunk at a time: the data is counted, not held."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, as MetaIO accepts
    size = 0
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            while (chunk := handle.read(_CHUNK)) and not inflater.eof:
                while chunk and not inflater.eof:  # at most _CHUNK bytes out per call: bounded memory
                    size += len(inflater.decompress(chunk, _CHUNK))
                    chunk = inflater.unconsumed_tail
    except (OSError, zlib.error):
        return None
    return size if inflater.eof else None
