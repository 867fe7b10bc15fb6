"""Image transforms for training and evaluation, in the style of torchvision's references.

Serving rebuilds `EvalPreset` from the model's metadata, so the endpoint sees
exactly the tensor that evaluation saw during training.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size_for(image_size: int) -> int:
    """The shorter side to resize to before the centre crop (256 for 224, as in ImageNet)."""
    return round(image_size / 0.875)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; 16-bit greyscale is scaled, not clipped.

    `convert("RGB")` handles L, P, LA, RGBA (drops alpha), CMYK and 16-bit RGB,
    but clips 16-bit greyscale (`I;16`, `I`) at 255, which turns it white.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    return image.convert("RGB")


def decode_reduced(image: Image.Image, min_side: int) -> Image.Image:
    """Let the JPEG decoder skip detail we are about to throw away.

    `Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8 scale while the
    shorter side stays >= `min_side`; it is a no-op for other formats.
    Returns an RGB image.
    """
    if image.format in ("JPEG", "MPO"):
        width, height = image.size
        scale = min(width, height) / max(min_side, 1)
        if scale >= 2:
            image.draft("RGB", (int(width / scale), int(height / scale)))
    return to_rgb(image)


class EvalPreset:
    """Resize the shorter side, centre-crop `crop_size`, scale to [0, 1], normalise."""

    def __init__(
        self,
        crop_size: int,
        resize_size: int | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.crop_size = crop_size
        self.resize_size = resize_size or resize_size_for(crop_size)
        # Split in two so a training loader can ship small uint8 images from its
        # workers and scale whole batches on the GPU; `__call__` runs both.
        self.geometry = T.Compose(
            [T.PILToTensor(), T.Resize(self.resize_size, antialias=True), T.CenterCrop(crop_size)]
        )
        self.scaling = _scaling(mean, std)
        self.transforms = T.Compose([self.geometry, self.scaling])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transforms(decode_reduced(image, self.resize_size))

    def uint8(self, image: Image.Image) -> torch.Tensor:
        """The resized, cropped uint8 CHW image; `scaling` (on one image or a batch) finishes it."""
        return self.geometry(decode_reduced(image, self.resize_size))


class TrainPreset:
    """Random resized crop and horizontal flip, then the same scaling as `EvalPreset`."""

    def __init__(
        self,
        crop_size: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        hflip_prob: float = 0.5,
    ) -> None:
        self.crop_size = crop_size
        self.geometry = T.Compose(
            [
                T.PILToTensor(),
                T.RandomResizedCrop(crop_size, antialias=True),
                T.RandomHorizontalFlip(hflip_prob),
            ]
        )
        self.scaling = _scaling(mean, std)
        self.transforms = T.Compose([self.geometry, self.scaling])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transforms(self._decode(image))

    def uint8(self, image: Image.Image) -> torch.Tensor:
        """The randomly cropped, flipped uint8 CHW image; `scaling` finishes it."""
        return self.geometry(self._decode(image))

    def _decode(self, image: Image.Image) -> Image.Image:
        # RandomResizedCrop keeps at least 8% of the area, so decoding at the
        # crop size still leaves enough pixels for any crop it picks.
        return decode_reduced(image, self.crop_size)


def _scaling(mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """uint8 [0, 255] -> float [0, 1] -> normalised; works on (..., C, H, W), so on batches too."""
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(mean), std=list(std))])
