"""Image files as untrusted input: their size is read from the header before anything is decoded.

A PNG whose header claims 100000x100000 pixels would ask the decoder for 30 GB. So
every image is checked here first, by reading the width and height from the file's
own header (PNG IHDR, JPEG SOFn, BMP info header, TIFF first IFD, WebP VP8/VP8L/VP8X),
walking the header segments, no pixel allocated, and refused when it exceeds `MAX_PIXELS`, when
a side exceeds `MAX_SIDE`, or when it is smaller than `MIN_SIDE` (no cell fits in it).
Only then does OpenCV decode it. This is a header read, not OpenCV's
`IMREAD_REDUCED_*` (which only shrinks JPEG decoding and still trusts the header).

`ImageRejected` (an `InputDataError`) names the file and the reason; callers that read
many files (the runner, the data index) record it and go on.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from wbcedge.errors import InputDataError

MAX_PIXELS = 1 << 26   # 67 megapixels (8192 x 8192): a 200 MB BGR frame, the most a Pi should decode
MAX_SIDE = 1 << 15     # 32768 px on either side
MIN_SIDE = 16          # below this on either side no white cell fits in the picture


class ImageRejected(InputDataError):
    """An image file that is not decoded: unreadable header, unknown format, too large or too small."""


def display_name(name: str | os.PathLike) -> str:
    """A file name as printable text: bytes that are not UTF-8 become \\xNN escapes (lossless with `os.fsencode`)."""
    return os.fsencode(os.fspath(name)).decode("utf-8", "backslashreplace")


def error_line(exc: BaseException) -> str:
    """The last line of an error's message (OpenCV's are several lines), or its type when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1]


def is_utf8_name(name: str | os.PathLike) -> bool:
    try:
        os.fspath(name).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def header_size(head: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the first bytes of an image file, or None for an unknown format.

    Raises ImageRejected for a known format whose header is cut short or inconsistent.
    """
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            if head[12:16] != b"IHDR":
                raise ImageRejected("PNG without an IHDR header")
            w, h = struct.unpack(">II", head[16:24])
            return "png", w, h
        if head[:2] == b"\xff\xd8":
            return ("jpeg", *_jpeg_size(head))
        if head[:2] == b"BM":
            w, h = struct.unpack("<ii", head[18:26])
            return "bmp", abs(w), abs(h)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return ("tiff", *_tiff_size(head))
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return ("webp", *_webp_size(head))
    except struct.error:
        raise ImageRejected("image header is cut short") from None
    return None


def _jpeg_size(head: bytes) -> tuple[int, int]:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            raise ImageRejected("JPEG header is damaged (no marker where one belongs)")
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return w, h
        if length < 2:
            raise ImageRejected("JPEG header is damaged (segment length < 2)")
        i += 2 + length
    raise ImageRejected("JPEG without a frame header (SOF) in its first bytes")


def _tiff_size(head: bytes) -> tuple[int, int]:
    end = "<" if head[:2] == b"II" else ">"
    offset = struct.unpack(end + "I", head[4:8])[0]
    count = struct.unpack(end + "H", head[offset:offset + 2])[0]
    size: dict[int, int] = {}
    for k in range(count):
        tag, typ, _, value = struct.unpack(end + "HHI4s", head[offset + 2 + 12 * k:offset + 14 + 12 * k])
        if tag in (256, 257):
            size[tag] = struct.unpack(end + ("H" if typ == 3 else "I"), value[:2 if typ == 3 else 4])[0]
    if 256 not in size or 257 not in size:
        raise ImageRejected("TIFF without width and height in its first directory")
    return size[256], size[257]


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(head[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    raise ImageRejected(f"WebP with an unknown first chunk {chunk!r}")


def check_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(width, height) of an image's bytes, or ImageRejected before any decoding if it is unusable."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        found = header_size(data)
    except ImageRejected as exc:
        raise ImageRejected(f"not a readable image ({exc})") from None
    if found is None:
        raise ImageRejected("not a readable image (not a PNG, JPEG, BMP, TIFF or WebP file)")
    fmt, w, h = found
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise ImageRejected(f"{fmt.upper()} header claims {w}x{h} pixels, above the {max_pixels:,} pixel budget "
                            f"(see docs/limits.md); not decoded")
    if min(w, h) < min_side:
        raise ImageRejected(f"{w}x{h} pixels is smaller than a cell (under {min_side} px on a side)")
    return w, h


def read_checked(path: Path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> bytes:
    """A file's bytes after its header passed `check_image_bytes`; ImageRejected names the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()  # the compressed bytes are bounded by the file; the decoded pixels are checked next
        check_image_bytes(data, max_pixels, min_side)
        return data
    except ImageRejected as exc:
        raise ImageRejected(f"{display_name(path)}: {exc}") from None
