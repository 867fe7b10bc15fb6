"""Generate a small image dataset in the dogImages layout, for tests, demos and dry runs.

Each class is a distinct hue with a little noise, so even a tiny network learns
it quickly: a run that cannot reach high accuracy on it has a bug.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

from PIL import Image

SPLITS = ("train", "valid", "test")


def class_folder_names(num_classes: int) -> list[str]:
    """`001.Class_001`, `002.Class_002`, ...: sorted order is index order, as in dogImages."""
    return [f"{index + 1:03d}.Class_{index + 1:03d}" for index in range(num_classes)]


def make_image(hue: float, size: tuple[int, int], rng: random.Random) -> Image.Image:
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.9)
    base = (int(red * 255), int(green * 255), int(blue * 255))
    image = Image.new("RGB", size, base)
    pixels = image.load()
    for _ in range(size[0] * size[1] // 8):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base)
    return image


def make_dataset(
    root: Path,
    num_classes: int = 3,
    images_per_class: dict[str, int] | None = None,
    size: tuple[int, int] = (48, 40),
    image_format: str = "JPEG",
    seed: int = 0,
) -> Path:
    """Write `root/{train,valid,test}/<class>/<n>.jpg` and return `root`.

    `images_per_class` maps split to count (default 6 train, 2 valid, 2 test).
    """
    counts = images_per_class or {"train": 6, "valid": 2, "test": 2}
    rng = random.Random(seed)
    suffix = ".png" if image_format.upper() == "PNG" else ".jpg"
    for split in SPLITS:
        for index, name in enumerate(class_folder_names(num_classes)):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(counts.get(split, 0)):
                image = make_image(index / num_classes, size, rng)
                image.save(folder / f"{name.split('.')[1]}_{n:04d}{suffix}", format=image_format)
    return Path(root)
