"""JPEG files built to cost more than their pixels, made in milliseconds (used by the endpoint's tests)."""

from __future__ import annotations

import io
import re
import struct

from PIL import Image

# A scan's entropy-coded data ends at the first marker other than a stuffed 0xFF00 or a restart (RSTn).
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_header_only(width: int, height: int, frame: int) -> bytes:
    """SOI, a quantization table, a frame header of kind `frame` (0xC0-0xCF) claiming width x height,
    one scan with no data, EOI. With arithmetic coding (0xC9) libjpeg decodes it to a gray image."""
    quantization = b"\xff\xdb\x00\x43\x00" + bytes([1] * 64)
    frame_header = struct.pack(">BHHB", 8, height, width, 3) + b"".join(
        bytes([component, 0x11, 0]) for component in (1, 2, 3)
    )
    scan_header = b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + quantization
        + bytes([0xFF, frame])
        + struct.pack(">H", 2 + len(frame_header))
        + frame_header
        + b"\xff\xda"
        + struct.pack(">H", 2 + len(scan_header))
        + scan_header
        + b"\xff\xd9"
    )


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of each segment after SOI up to EOI; a scan's bytes include its entropy-coded data."""
    segments, position = [], 2
    while data[position + 1] != 0xD9:
        marker = data[position + 1]
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            end = _END_OF_SCAN.search(data, end).start()
        segments.append((marker, data[position:end]))
        position = end
    return segments


def repeated_scans(image: Image.Image, repeats: int, **options) -> bytes:
    """A progressive JPEG of `image` whose last scan (libjpeg's luma AC refinement, the costliest per
    byte: it revisits every coefficient of every block) comes `repeats` more times. libjpeg warns
    ("inconsistent progression sequence") and decodes every one."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", progressive=True, **options)
    segments = jpeg_segments(buffer.getvalue())
    last_scan = [segment for marker, segment in segments if marker == 0xDA][-1]
    return b"\xff\xd8" + b"".join(segment for _, segment in segments) + last_scan * repeats + b"\xff\xd9"
