"""In-memory image decoding with size checks: a frame becomes a BGR array without touching disk.

Frames are decoded, read and dropped in memory; raw images are never kept. The size is read from the JPEG or
PNG header first, so a decompression bomb is refused before it is decoded.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from server.errors import FerError

if TYPE_CHECKING:
    import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, walking segment lengths from the SOI marker."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        else:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if length < 2:
                return None
            pos += 2 + length
    return None


def _png_chunks_fit(data: bytes) -> bool:
    """Whether each chunk of a PNG fits in the bytes sent, up to its IEND. OpenCV sizes its buffer by a
    chunk's declared length before it reads the chunk: a 300-byte PNG declaring a 4 GB IDAT takes 4 GB."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if pos > len(data):
            return False
        if kind == b"IEND":
            return True
    return False


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG IHDR or a JPEG SOF header; None if the bytes are neither."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_size(data)
    return None


def _check_side(width: int, height: int, max_side: int) -> None:
    if max(width, height) > max_side:
        raise FerError(
            "image_too_large",
            f"The image is {width}x{height} pixels; the longest side may be {max_side}. Send a smaller one.",
            413,
        )


def decode_image(data: bytes, *, max_bytes: int = 10 * 1024 * 1024, max_side: int = 4096) -> np.ndarray:
    """Decode a JPEG or PNG frame in memory into a BGR uint8 array; nothing touches disk.

    The size is read from the file header before decoding, so a small file that claims a huge image (a
    decompression bomb) is refused before it can allocate gigabytes on a 4 GB Pi. Only JPEG and PNG pass: the
    API promises those, and it keeps OpenCV's rarer decoders (TIFF, JPEG 2000, ...) away from network input.
    """
    if len(data) > max_bytes:
        raise FerError(
            "image_too_large",
            f"The image is {len(data)} bytes; the limit is {max_bytes}. Send a smaller JPEG or PNG.",
            413,
        )
    size = _header_size(data)
    if size is None or 0 in size:
        raise FerError("bad_image", "The frame is not a readable image: send a JPEG or PNG.", 415)
    _check_side(*size, max_side)
    if data.startswith(_PNG_SIGNATURE) and not _png_chunks_fit(data):
        raise FerError(
            "bad_image",
            "The PNG is truncated or damaged (a chunk runs past its end): send a complete one.",
            415,
        )

    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FerError("bad_image", "The frame could not be decoded: send a complete JPEG or PNG.", 415)
    # The header parser and the decoder could disagree on a crafted file; the decoded size is what counts.
    _check_side(image.shape[1], image.shape[0], max_side)
    return image


def shrink(image: np.ndarray, longest: int = 1280) -> np.ndarray:
    """Scale a frame down so its longest side is at most `longest`.

    A turn may carry several frames; kept at full size, eight 4096-pixel frames would hold 400 MB of a Pi's
    memory until the reply ends. Face reading needs far fewer pixels than that.
    """
    height, width = image.shape[:2]
    if max(height, width) <= longest:
        return image
    import cv2

    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
