"""Fixture builders for the adversarial suite: every bad input is made here, from nothing or from the shipped samples."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
FRAMES = REPO / "wbcedge" / "samples" / "frames"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose data is a few bytes: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def sample_frames(n: int = 2) -> list[Path]:
    return sorted(FRAMES.glob("*.jpg"))[:n]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real console entry point (`wbcedge.cli.main`) in-process: (exit code, stdout, stderr)."""
    from wbcedge.cli import main

    old = sys.argv
    sys.argv = ["wbcedge", *argv]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
