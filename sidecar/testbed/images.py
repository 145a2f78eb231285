"""Synthetic colour images for tests, demos and benchmarks: varied scenes in [0, 1], and the corruptions that
image models meet in production (sensor noise, a lighting change over part of the frame).

Each image is a smooth background gradient plus a few soft coloured blobs at random places, so images differ in
their layout and colours the way photographs do, rather than being white noise.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def scenes(count: int, size: int = 32, seed: int | np.random.Generator = 0, blobs: int = 4) -> Array:
    """`count` RGB images (count, size, size, 3), float32 in [0, 1]."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    start = rng.uniform(0.1, 0.6, size=(count, 1, 1, 3)).astype(np.float32)
    slope = rng.uniform(-0.3, 0.3, size=(count, 2, 1, 1, 3)).astype(np.float32)
    images = start + slope[:, 0] * x[None, :, :, None] + slope[:, 1] * y[None, :, :, None]
    for _ in range(blobs):
        cx, cy = rng.uniform(0, 1, size=(2, count, 1, 1))
        radius = rng.uniform(0.08, 0.25, size=(count, 1, 1))
        colour = rng.uniform(-0.4, 0.4, size=(count, 1, 1, 3))
        weight = np.exp(-((x[None] - cx) ** 2 + (y[None] - cy) ** 2) / (2 * radius**2))
        images = images + (weight[..., None] * colour).astype(np.float32)
    clipped: Array = np.clip(images, 0.0, 1.0).astype(np.float32)
    return clipped


def gaussian_noise(images: Array, sd: float, seed: int = 1) -> Array:
    noisy = images + np.random.default_rng(seed).normal(0.0, sd, size=images.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def brighter_half(images: Array, amount: float) -> Array:
    """The lower half of every image `amount` brighter (a light source that reaches part of the frame)."""
    out = images.copy()
    out[:, images.shape[1] // 2:] = np.clip(out[:, images.shape[1] // 2:] + amount, 0.0, 1.0)
    return out


def encode(images: Array, image_format: str = "PNG", quality: int = 90) -> list[bytes]:
    """Images as PNG or JPEG bytes (needs Pillow)."""
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        pixels = Image.fromarray(np.round(image * 255).astype(np.uint8))
        if image_format.upper() == "JPEG":
            pixels.save(buffer, format="JPEG", quality=quality)
        else:
            pixels.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded
