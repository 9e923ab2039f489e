from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from device.camera import CameraSource, ImageFileSource
from device.errors import CameraError


def _write(path: Path, bgr: tuple[int, int, int]) -> Path:
    import cv2

    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[:] = bgr
    assert cv2.imwrite(str(path), image)
    return path


def _colour(jpeg: bytes | None) -> tuple[int, ...]:
    import cv2

    assert jpeg is not None and jpeg.startswith(b"\xff\xd8\xff"), "not a JPEG"
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return tuple(round(c / 50) * 50 for c in image[12, 16])


def test_single_png_is_reencoded_as_jpeg(tmp_path: Path) -> None:
    source = ImageFileSource(_write(tmp_path / "one.png", (0, 0, 250)))
    assert _colour(source.latest()) == (0, 0, 250)
    assert _colour(source.latest()) == (0, 0, 250)


def test_folder_cycles_through_its_images_in_name_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.jpg", (0, 250, 0))
    _write(tmp_path / "a.png", (250, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image, and not looked at", encoding="utf-8")
    source = ImageFileSource(tmp_path)
    colours = [_colour(source.latest()) for _ in range(5)]
    assert colours == [(250, 0, 0), (0, 250, 0), (250, 0, 0), (0, 250, 0), (250, 0, 0)]


def test_non_image_file_is_named_in_the_error(tmp_path: Path) -> None:
    fake = tmp_path / "face.jpg"
    fake.write_text("hello", encoding="utf-8")
    with pytest.raises(CameraError, match=r"face\.jpg is not an image"):
        ImageFileSource(fake)
    with pytest.raises(CameraError, match=r"face\.jpg is not an image"):
        ImageFileSource(tmp_path)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="holds no images"):
        ImageFileSource(tmp_path)
    with pytest.raises(CameraError, match="does not exist"):
        ImageFileSource(tmp_path / "nowhere")


def test_absent_camera_warns_once_and_gives_no_frame(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="device.camera"):
        camera = CameraSource(97)
        assert camera.latest() is None
        assert camera.latest() is None
        camera.close()
    warnings = [r for r in caplog.records if r.name == "device.camera"]
    assert len(warnings) == 1 and "cannot open camera 97" in warnings[0].getMessage()
