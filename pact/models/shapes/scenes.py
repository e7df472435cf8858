"""Seeded synthetic scenes: a few coloured shapes on plain, textured or photographic ground.

A scene is small objects (the important, rare tokens) on a large background (the
redundant tokens), as in real images.  Every function is deterministic given its seed,
uses numpy only (the photographs come from scikit-image's bundled data), and draws
with boolean masks, so the same seed gives the same pixels on every platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

IMAGE_PX = 96
COLOURS = {
    "red": (225, 30, 30),
    "green": (30, 185, 45),
    "blue": (40, 70, 235),
    "yellow": (245, 225, 35),
    "purple": (160, 45, 210),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 6.5, "large": 11.0}  # radius in pixels
# scikit-image's bundled photographs (no download); the ground of "photo" scenes.
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "rocket",
          "coins", "moon", "immunohistochemistry", "hubble_deep_field")
BACKGROUNDS = ("plain", "texture", "photo")
MAX_OBJECTS = 4
GAP_PX = 3  # free pixels between two objects' bounding circles


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its attributes and its centre in pixels (x right, y down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    """A rendered scene: ``image`` is ``[IMAGE_PX, IMAGE_PX, 3]`` uint8."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    background: str


def render_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    """Draw a scene of 1..max_objects distinct (shape, colour) objects on a random ground."""
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    image = _background(background, rng)
    objects = _place_objects(rng, int(rng.integers(1, max_objects + 1)))
    for obj in objects:
        mask = shape_mask(obj.shape, obj.x, obj.y, obj.radius)
        outline = _dilate(mask) & ~mask  # a dark rim keeps objects apart from busy grounds
        image[outline] = (20, 20, 20)
        image[mask] = COLOURS[obj.colour]
    return Scene(image=image, objects=tuple(objects), background=background)


def _place_objects(rng: np.random.Generator, count: int) -> list[SceneObject]:
    """Non-overlapping objects with distinct (shape, colour) pairs, sampled by rejection."""
    objects: list[SceneObject] = []
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    for _ in range(200):
        if len(objects) == count:
            break
        shape, colour = pairs[rng.integers(len(pairs))]
        if any(o.shape == shape and o.colour == colour for o in objects):
            continue
        size = ("small", "large")[rng.integers(2)]
        radius = SIZES[size]
        x, y = rng.uniform(radius + 2, IMAGE_PX - radius - 2, size=2)
        if all(np.hypot(o.x - x, o.y - y) > o.radius + radius + GAP_PX for o in objects):
            objects.append(SceneObject(shape, colour, size, float(x), float(y)))
    return objects


def shape_mask(shape: str, x: float, y: float, radius: float) -> np.ndarray:
    """Boolean ``[IMAGE_PX, IMAGE_PX]`` mask of a shape centred at pixel ``(x, y)``."""
    rows, cols = np.mgrid[0:IMAGE_PX, 0:IMAGE_PX].astype(np.float64) + 0.5
    dx, dy = cols - x, rows - y
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = radius * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # apex up; the base is as wide as the height
        top, bottom = -radius, radius * 0.8
        depth = (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= depth * radius)
    if shape == "cross":
        arm = radius / 3
        horizontal = (np.abs(dx) <= radius) & (np.abs(dy) <= arm)
        return horizontal | ((np.abs(dy) <= radius) & (np.abs(dx) <= arm))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Mask grown by one pixel in the 4 directions."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A muted ``[IMAGE_PX, IMAGE_PX, 3]`` uint8 ground, so saturated objects stand out."""
    if kind == "plain":
        ground = np.broadcast_to(rng.uniform(0, 255, size=3), (IMAGE_PX, IMAGE_PX, 3))
    elif kind == "texture":
        ground = _texture(rng)
    else:
        ground = _photo_crop(rng)
    grey = ground.mean(axis=-1, keepdims=True)
    muted = 0.35 * ground + 0.65 * grey  # less saturated than any object colour
    return (60 + muted * 0.55).round().clip(0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Stripes, a checkerboard or smooth noise in two random colours."""
    rows, cols = np.mgrid[0:IMAGE_PX, 0:IMAGE_PX].astype(np.float64)
    kind = rng.integers(3)
    if kind == 0:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        weight = (np.sin((cols * np.cos(angle) + rows * np.sin(angle)) * 2 * np.pi / period) > 0)
    elif kind == 1:
        cell = int(rng.integers(6, 20))
        weight = ((rows // cell + cols // cell) % 2).astype(bool)
    else:
        coarse = rng.uniform(0, 1, size=(7, 7))
        index = np.minimum((np.arange(IMAGE_PX) * 7) // IMAGE_PX, 6)
        weight = coarse[index][:, index]
    first, second = rng.uniform(0, 255, size=(2, 3))
    weight = weight.astype(np.float64)[..., None]
    return first * (1 - weight) + second * weight


def _photo_crop(rng: np.random.Generator) -> np.ndarray:
    """A random square crop of a bundled photograph, resampled to the image side."""
    photo = _photo(PHOTOS[rng.integers(len(PHOTOS))])
    height, width = photo.shape[:2]
    side = int(rng.integers(IMAGE_PX, min(height, width) + 1))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    index = (np.arange(IMAGE_PX) * side) // IMAGE_PX  # nearest-neighbour resampling
    crop = photo[top + index][:, left + index]
    return crop.astype(np.float64)


@cache
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as ``[H, W, 3]`` uint8 (grey and alpha images converted)."""
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - the extra is in pact-vlm[quality]
        raise ImportError(
            'scenes with photographs need scikit-image: pip install "pact-vlm[quality]"'
        ) from error
    photo = np.asarray(getattr(skimage.data, name)())
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    return np.ascontiguousarray(photo[..., :3])
