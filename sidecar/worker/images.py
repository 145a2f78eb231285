"""Encoded images to small fixed-size pixel rows, and strings to a few summary numbers. Runs in worker processes.

Image inputs reach the codec as the exact bytes of a PNG, JPEG, GIF, BMP or WebP file (a `{"b64": ...}` value,
a DT_STRING or BYTES tensor element). Treated as categories they say nothing, so each image is decoded,
converted to RGB and resized to IMAGE_SIZE x IMAGE_SIZE, giving one row of IMAGE_SIZE * IMAGE_SIZE * 3 numbers
in [0, 1] that drift and outlier detectors can compare like any other numeric feature.

Why Pillow: it reads every format above with C decoders, and its JPEG draft mode lets libjpeg decode a large
photo directly at 1/2, 1/4 or 1/8 scale (the DCT is scaled), which makes a 12-megapixel photo about as cheap to
reduce as a thumbnail. It is an optional dependency (the `images` extra), imported on first use, so the sidecar
runs without it; `pillow_available()` tells callers whether images can be decoded. Only the five formats above
are ever opened (Pillow's other plugins, such as EPS through Ghostscript, are never reached from captured
bytes), truncated files are not accepted, and an image declaring more than MAX_PIXELS pixels is refused before
any pixel is decoded (a decompression bomb is a few kilobytes that declare gigapixels).

Why 32 x 32: 3,072 numbers per image keep colour, brightness, contrast and coarse layout, which is what input
drift in images mostly is (a new camera, lighting, a different crop or subject), while a window of thousands
of images stays a few tens of megabytes and decoding, not the analysis, dominates the cost. It is the CIFAR-10
resolution commonly used to detect image drift (for example with MMD on a learned or random projection).
The aspect ratio is not kept: every image is stretched to the square, the same way for reference and live data.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

IMAGE_SIZE = 32
"""Side in pixels of the square every image is resized to."""

MAX_PIXELS = 40_000_000
"""Images declaring more pixels than this (width * height) are refused as undecodable: about a 7,700 x 5,200
photo; above what cameras and phones produce, far below what a decompression bomb declares."""

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
"""The Pillow formats decode_images opens; any other file is undecodable."""

TEXT_SUMMARY_NAMES = ("length", "letters", "digits", "spaces")
"""Columns of summarise_text: length, then the fractions of letters, digits and whitespace."""

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})  # BITMAPCOREHEADER ... BITMAPV5HEADER, OS/2 v2


def looks_like_image(value: object) -> bool:
    """True for bytes that start like a PNG, JPEG, GIF, BMP or WebP file (the magic numbers; nothing is decoded).

    Only bytes qualify: the codec keeps binary payloads as bytes and turns valid UTF-8 into str, so a str is text.
    """
    if not isinstance(value, (bytes, bytearray)):
        return False
    head = bytes(value[:18])
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")):
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    # "BM" alone is two common letters: also require a known DIB header size after the 14-byte file header
    return head.startswith(b"BM") and len(head) == 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES


@functools.cache
def _pillow() -> ModuleType | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def pillow_available() -> bool:
    """Whether Pillow is installed (the `images` extra); without it decode_images raises ImportError."""
    return _pillow() is not None


def decode_images(values: Sequence[object] | np.ndarray, size: int = IMAGE_SIZE) -> tuple[np.ndarray, int]:
    """Decode encoded images to an (n, size * size * 3) float64 array in [0, 1] and the count of failures.

    Each value is opened with Pillow, converted to RGB (greyscale is repeated on the three channels, palettes
    are looked up, alpha is dropped, 16-bit greyscale is scaled rather than clipped), resized to size x size
    with a bilinear filter, and flattened in row-major (height, width, channel) order. A value that cannot be
    decoded (not bytes, an unknown format, a truncated or corrupt file, more than MAX_PIXELS pixels) gives a
    row of NaN and is counted; nothing in the values makes this raise. `values` is 1-D (a list, or an object
    array of the codec). Raises ImportError when Pillow is not installed (check `pillow_available()`).
    """
    image_module = _pillow()
    if image_module is None:
        raise ImportError("decoding images needs Pillow: install tfs-sidecar[images]")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    rows = np.full((len(values), size * size * 3), np.nan, dtype=np.float64)
    failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, palette transparency notes: per-image noise
        for index, value in enumerate(values):
            pixels = _decode(image_module, value, size)
            if pixels is None:
                failed += 1
            else:
                rows[index] = pixels
    return rows, failed


def _decode(image_module: Any, value: object, size: int) -> np.ndarray | None:
    """One image as a flat float64 row, or None when it cannot be decoded."""
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) == 0:
        return None
    try:
        with image_module.open(io.BytesIO(value), formats=FORMATS) as image:
            width, height = image.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                return None
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # libjpeg decodes at the smallest scale still >= size
            if image.mode.startswith("I"):
                return _deep_grey(image_module, image, size)
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), image_module.Resampling.BILINEAR, reducing_gap=3.0)
            pixels = np.asarray(rgb, dtype=np.float64)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        return None
    if pixels.shape != (size, size, 3):
        return None
    return pixels.reshape(-1) / 255.0


def _deep_grey(image_module: Any, image: Any, size: int) -> np.ndarray:
    """16-bit (or 32-bit integer) greyscale: Pillow's RGB conversion would clip at 255, so scale by 65535."""
    grey = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    resized = image_module.fromarray(grey).resize((size, size), image_module.Resampling.BILINEAR)
    values = np.asarray(resized, dtype=np.float64).clip(0.0, 1.0)
    return np.repeat(values[:, :, None], 3, axis=2).reshape(-1)


# ASCII class of every byte value: 1 letter, 2 digit, 3 whitespace, 0 other (bytes >= 128 included). Built from
# str's own predicates so that the byte path for ASCII strings gives exactly what the per-character path gives.
_LETTER, _DIGIT, _SPACE = 1, 2, 3
_CLASSES = bytes(
    _LETTER if char.isalpha() else _DIGIT if char.isdigit() else _SPACE if char.isspace() else 0
    for char in map(chr, range(128))
) + bytes(128)


def summarise_text(values: Sequence[object] | np.ndarray) -> np.ndarray:
    """(n, 4) float64 summary of strings, columns TEXT_SUMMARY_NAMES.

    length: characters of a str, bytes of a bytes value; then the fractions of letters, digits and whitespace
    (Python's str.isalpha / isdigit / isspace; for bytes, ASCII bytes of those classes). An empty string gives
    length 0 and fractions 0; None (a missing value) or anything that is not str or bytes gives a row of NaN.
    ASCII strings and bytes are classified in C (bytes.translate, then count), so a large binary value costs
    a few milliseconds per megabyte and one temporary copy of its size; other strings go
    character by character.
    """
    rows = [text_summary(value) for value in values]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(TEXT_SUMMARY_NAMES))


_MISSING = (math.nan, math.nan, math.nan, math.nan)


def text_summary(value: object) -> tuple[float, float, float, float]:
    """One value's row of `summarise_text`."""
    if isinstance(value, str):
        if not value.isascii():  # non-empty
            length = len(value)
            return (float(length), sum(map(str.isalpha, value)) / length, sum(map(str.isdigit, value)) / length,
                    sum(map(str.isspace, value)) / length)
        raw = value.encode("ascii")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        return _MISSING
    length = len(raw)
    if length == 0:
        return 0.0, 0.0, 0.0, 0.0
    classes = raw.translate(_CLASSES)
    return float(length), classes.count(_LETTER) / length, classes.count(_DIGIT) / length, \
        classes.count(_SPACE) / length
