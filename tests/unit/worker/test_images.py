"""Encoded images to fixed-size pixel rows, and strings to summary numbers (sidecar.worker.images)."""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from sidecar.worker import images
from sidecar.worker.images import (
    IMAGE_SIZE,
    TEXT_SUMMARY_NAMES,
    decode_images,
    looks_like_image,
    pillow_available,
    summarise_text,
)

Image = pytest.importorskip("PIL.Image")

ROW = IMAGE_SIZE * IMAGE_SIZE * 3


def encoded(pixels: Any, fmt: str, mode: str | None = None, **options: Any) -> bytes:
    """The file bytes of `pixels` (an array or a PIL image) in format `fmt`, optionally converted to `mode`."""
    image = Image.fromarray(pixels) if isinstance(pixels, np.ndarray) else pixels
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def random_rgb(seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def smooth_rgb(size: int = IMAGE_SIZE) -> np.ndarray:
    """Gradients, which JPEG keeps closely (random noise is what JPEG discards)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return (np.stack([x, y, (x + y) / 2], axis=2) * 255).round().astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height, with one empty IDAT: what a bomb's header looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pillow_is_available_in_the_test_environment() -> None:
    assert pillow_available()


def test_a_png_at_the_target_size_round_trips_exactly() -> None:
    pixels = random_rgb(1)

    rows, failed = decode_images([encoded(pixels, "PNG")])

    assert failed == 0
    assert rows.shape == (1, ROW) and rows.dtype == np.float64
    np.testing.assert_array_equal(rows[0], pixels.reshape(-1) / 255.0)


def test_rows_are_flattened_in_height_width_channel_order() -> None:
    pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[0, 1] = (10, 20, 30)  # row 0, column 1
    pixels[2, 0, 2] = 255  # row 2, column 0, blue

    row = decode_images([encoded(pixels, "PNG")])[0][0]

    assert row[3:6].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert row[(2 * IMAGE_SIZE + 0) * 3 + 2] == 1.0
    assert np.count_nonzero(row) == 4


def test_a_jpeg_decodes_close_to_its_pixels() -> None:
    pixels = smooth_rgb()

    rows, failed = decode_images([encoded(pixels, "JPEG", quality=95)])

    assert failed == 0
    error = np.abs(rows[0] - pixels.reshape(-1) / 255.0)
    assert error.mean() < 0.02 and error.max() < 0.15


def test_a_large_jpeg_is_reduced_to_the_target_size() -> None:
    pixels = np.zeros((600, 800, 3), dtype=np.uint8)
    pixels[:, :400] = (200, 30, 30)  # left half red, right half blue
    pixels[:, 400:] = (30, 30, 200)

    rows, failed = decode_images([encoded(pixels, "JPEG", quality=90)])

    grid = rows[0].reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    assert failed == 0
    np.testing.assert_allclose(grid[:, :14], np.broadcast_to([200 / 255, 30 / 255, 30 / 255], (32, 14, 3)), atol=0.06)
    np.testing.assert_allclose(grid[:, 18:], np.broadcast_to([30 / 255, 30 / 255, 200 / 255], (32, 14, 3)), atol=0.06)


def test_a_larger_png_is_resized_bilinearly_to_the_target_size() -> None:
    pixels = np.kron(random_rgb(2, 8), np.ones((16, 16, 1), dtype=np.uint8))  # 128 x 128 of flat 16 x 16 blocks

    rows, _ = decode_images([encoded(pixels, "PNG")])

    grid = rows[0].reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    blocks = random_rgb(2, 8) / 255.0
    # the centre 2 x 2 of every 4 x 4 output block lies wholly inside one flat input block
    np.testing.assert_allclose(grid[1::4, 1::4], blocks, atol=1e-9)
    np.testing.assert_allclose(grid[2::4, 2::4], blocks, atol=1e-9)


@pytest.mark.parametrize("size", [8, 64])
def test_the_size_is_a_parameter(size: int) -> None:
    rows, failed = decode_images([encoded(random_rgb(3), "PNG")], size=size)

    assert failed == 0 and rows.shape == (1, size * size * 3)
    assert np.all((rows >= 0) & (rows <= 1))


def test_greyscale_rgba_palette_and_one_bit_images_become_rgb() -> None:
    pixels = random_rgb(4)
    rgba = np.concatenate([pixels, np.full((IMAGE_SIZE, IMAGE_SIZE, 1), 7, dtype=np.uint8)], axis=2)
    grey = Image.fromarray(pixels).convert("L")
    palette = Image.fromarray(pixels).quantize(16)
    bits = Image.fromarray(pixels).convert("1")

    rows, failed = decode_images([encoded(rgba, "PNG"), encoded(pixels, "PNG", mode="L"),
                                  encoded(pixels, "PNG", mode="P"), encoded(pixels, "GIF"), encoded(pixels, "BMP"),
                                  encoded(palette, "PNG"),
                                  encoded(pixels, "PNG", mode="1")])

    assert failed == 0
    grid = rows.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(grid[0], pixels / 255.0)  # alpha dropped
    np.testing.assert_array_equal(grid[1], np.repeat(np.asarray(grey)[:, :, None], 3, axis=2) / 255.0)
    np.testing.assert_array_equal(grid[2], np.asarray(Image.fromarray(pixels).convert("P").convert("RGB")) / 255.0)
    np.testing.assert_array_equal(grid[3], np.asarray(Image.open(io.BytesIO(encoded(pixels, "GIF"))).convert("RGB"))
                                  / 255.0)
    np.testing.assert_array_equal(grid[4], pixels / 255.0)  # BMP is lossless RGB
    np.testing.assert_array_equal(grid[5], np.asarray(palette.convert("RGB")) / 255.0)  # 16 colours: exact palette
    np.testing.assert_array_equal(grid[6], np.repeat(np.asarray(bits, dtype=np.float64)[:, :, None], 3, axis=2))


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    deep = (np.arange(IMAGE_SIZE * IMAGE_SIZE).reshape(IMAGE_SIZE, IMAGE_SIZE) * 64).astype(np.uint16)

    rows, failed = decode_images([encoded(deep, "PNG")])

    assert failed == 0
    grid = rows[0].reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(grid[:, :, 0], deep / 65535.0, atol=1e-6)
    assert np.array_equal(grid[:, :, 0], grid[:, :, 2])


def test_webp_decodes_when_pillow_has_it() -> None:
    features = pytest.importorskip("PIL.features")
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    pixels = random_rgb(5)

    rows, failed = decode_images([encoded(pixels, "WEBP", lossless=True)])

    assert failed == 0
    np.testing.assert_array_equal(rows[0], pixels.reshape(-1) / 255.0)


def test_undecodable_values_give_nan_rows_and_are_counted() -> None:
    good = encoded(random_rgb(6), "PNG")
    jpeg = encoded(smooth_rgb(), "JPEG")
    values: list[object] = [good, good[: len(good) // 2], jpeg[: len(jpeg) // 3], b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
                            np.random.default_rng(0).bytes(500), b"", "a caption", None, 3.5, good]

    rows, failed = decode_images(values)

    assert failed == 8
    decoded = ~np.isnan(rows).all(axis=1)
    assert decoded.tolist() == [True] + [False] * 8 + [True]
    assert not np.isnan(rows[decoded]).any()


def test_formats_other_than_png_jpeg_gif_bmp_webp_are_not_opened() -> None:
    rows, failed = decode_images([encoded(random_rgb(7), "TIFF"), encoded(random_rgb(7), "PPM")])

    assert failed == 2 and np.isnan(rows).all()


def test_an_object_array_from_the_codec_is_accepted() -> None:
    values = np.empty(2, dtype=object)
    values[:] = [encoded(random_rgb(8), "PNG"), None]

    rows, failed = decode_images(values)

    assert rows.shape == (2, ROW) and failed == 1


def test_no_values_give_an_empty_array() -> None:
    rows, failed = decode_images([])

    assert rows.shape == (0, ROW) and failed == 0


@pytest.mark.parametrize(("width", "height"), [(8_000, 6_000), (100_000, 100_000), (2**31 - 1, 2**31 - 1)])
def test_an_image_declaring_too_many_pixels_is_refused(width: int, height: int) -> None:
    assert width * height > images.MAX_PIXELS

    rows, failed = decode_images([png_header_only(width, height)])

    assert failed == 1 and np.isnan(rows).all()


def test_the_pixel_bound_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    image = encoded(random_rgb(9, 64), "PNG")
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64 - 1)

    assert decode_images([image])[1] == 1
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    assert decode_images([image])[1] == 0


def test_without_pillow_decoding_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_pillow", lambda: None)

    assert not images.pillow_available()
    with pytest.raises(ImportError):
        decode_images([b"\x89PNG\r\n\x1a\n"])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_looks_like_image_recognises_each_format_it_decodes(fmt: str) -> None:
    features = pytest.importorskip("PIL.features")
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")

    value = encoded(random_rgb(10), fmt)

    assert looks_like_image(value)
    assert looks_like_image(bytearray(value))


@pytest.mark.parametrize("value", [
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF87a", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little"),
])
def test_looks_like_image_checks_magic_numbers(value: bytes) -> None:
    assert looks_like_image(value)


@pytest.mark.parametrize("value", [
    "\x89PNG\r\n\x1a\n", "GIF89a", b"", b"hello", b"BMW 320i, blue, 2019", b"RIFF\x00\x00\x00\x00WAVEfmt ",
    b"\xff\xd8", b"\x89PNX", b"BM" + b"\x00" * 12 + b"\x28\x00", None, 42, memoryview(b"GIF89a"),
])
def test_looks_like_image_is_false_for_text_and_other_values(value: object) -> None:
    assert not looks_like_image(value)


def test_summarise_text_columns() -> None:
    assert TEXT_SUMMARY_NAMES == ("length", "letters", "digits", "spaces")


def test_summarise_text_on_known_strings() -> None:
    values: list[object] = ["abc 12", "", "   ", "1234", "héllo wörld", "日本 2024", b"ab\x00\xff", b"", None, 7,
                            "tab\there\n"]

    summary = summarise_text(values)

    assert summary.shape == (len(values), 4) and summary.dtype == np.float64
    assert summary[0].tolist() == [6, 3 / 6, 2 / 6, 1 / 6]
    assert summary[1].tolist() == [0, 0, 0, 0]
    assert summary[2].tolist() == [3, 0, 0, 1]
    assert summary[3].tolist() == [4, 0, 1, 0]
    assert summary[4].tolist() == [11, 10 / 11, 0, 1 / 11]  # characters, not UTF-8 bytes
    assert summary[5].tolist() == [7, 2 / 7, 4 / 7, 1 / 7]
    assert summary[6].tolist() == [4, 2 / 4, 0, 0]  # bytes: length in bytes, ASCII classes only
    assert summary[7].tolist() == [0, 0, 0, 0]
    assert all(math.isnan(cell) for cell in summary[8]) and all(math.isnan(cell) for cell in summary[9])
    assert summary[10].tolist() == [9, 7 / 9, 0, 2 / 9]


def test_summarise_text_agrees_with_strs_own_predicates() -> None:
    rng = np.random.default_rng(11)
    alphabet = list("aZ09 \t\n\x0b\x1c\x1f.,;-_é€\u2003٣") + [chr(code) for code in range(128)]
    values = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))) for _ in range(300)]

    summary = summarise_text(values)

    for value, row in zip(values, summary, strict=True):
        n = len(value)
        expected = [n, *(sum(map(test, value)) / n if n else 0.0 for test in (str.isalpha, str.isdigit, str.isspace))]
        assert row.tolist() == pytest.approx(expected, abs=0), repr(value)


def test_summarise_text_of_nothing_and_of_an_object_array() -> None:
    values = np.empty(2, dtype=object)
    values[:] = ["ab", None]

    assert summarise_text([]).shape == (0, 4)
    summary = summarise_text(values)
    assert summary[0].tolist() == [2, 1, 0, 0] and np.isnan(summary[1]).all()
