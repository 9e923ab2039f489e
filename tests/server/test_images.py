"""In-memory frame decoding: JPEG and PNG only, sizes checked from the header before anything is decoded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from server.errors import FerError
from server.face import images


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_decode_round_trip(ext: str) -> None:
    image = np.full((30, 40, 3), (255, 0, 0), np.uint8)
    decoded = images.decode_image(encode(image, ext))
    assert decoded.shape == (30, 40, 3)
    assert decoded.dtype == np.uint8
    assert decoded[15, 20, 0] > 200 and decoded[15, 20, 2] < 50  # still blue: BGR order kept


def test_shrink_keeps_small_frames_and_scales_big_ones_keeping_the_aspect() -> None:
    small = np.zeros((480, 640, 3), np.uint8)
    assert images.shrink(small) is small
    big = np.full((3000, 4000, 3), 200, np.uint8)
    shrunk = images.shrink(big)
    assert shrunk.shape == (960, 1280, 3)
    assert shrunk.dtype == np.uint8 and int(shrunk[480, 640, 0]) == 200


def test_decode_gray_jpeg_gives_three_channels() -> None:
    assert images.decode_image(encode(np.zeros((8, 8), np.uint8), ".jpg")).shape == (8, 8, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        np.random.default_rng(0).bytes(5000),
        b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(5000),  # JPEG magic, garbage after
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",  # a real format, but not one the API accepts
    ],
)
def test_undecodable_bytes_are_415(data: bytes) -> None:
    with pytest.raises(FerError) as info:
        images.decode_image(data)
    assert (info.value.code, info.value.status) == ("bad_image", 415)
    assert "JPEG or PNG" in info.value.message


def test_truncated_png_is_415() -> None:
    data = encode(np.zeros((20, 20, 3), np.uint8), ".png")
    with pytest.raises(FerError) as info:
        images.decode_image(data[:40])
    assert (info.value.code, info.value.status) == ("bad_image", 415)


@pytest.mark.parametrize(("ext", "shape"), [(".png", (10, 5000, 3)), (".jpg", (5000, 10, 3))])
def test_too_many_pixels_is_413(ext: str, shape: tuple[int, int, int]) -> None:
    with pytest.raises(FerError) as info:
        images.decode_image(encode(np.zeros(shape, np.uint8), ext))
    assert (info.value.code, info.value.status) == ("image_too_large", 413)
    assert "5000" in info.value.message


def test_size_is_checked_from_the_header_before_decoding() -> None:
    """A PNG header claiming 100000x100000 (30 GB decoded) must be refused without decoding anything."""
    header = encode(np.zeros((1, 1, 3), np.uint8), ".png")
    bomb = bytearray(header)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    with pytest.raises(FerError) as info:
        images.decode_image(bytes(bomb))
    assert info.value.status == 413


def test_too_many_bytes_is_413() -> None:
    with pytest.raises(FerError) as info:
        images.decode_image(b"\xff\xd8\xff" + bytes(11 * 1024 * 1024))
    assert (info.value.code, info.value.status) == ("image_too_large", 413)
