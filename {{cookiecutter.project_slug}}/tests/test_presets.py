"""The shared presets: EXIF orientation as PIL applies it, and work bounded by the crop, not the image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from classifier import presets


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Red grows to the right, green downwards, blue is noise: every turn and flip changes it."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    noise = np.random.default_rng(seed).integers(0, 64, (height, width))
    return Image.fromarray(np.stack([x, y, noise], axis=-1).astype(np.uint8), "RGB")


def encode(image: Image.Image, image_format: str, orientation: int | None = None, **options) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def upright_png(data: bytes) -> bytes:
    """The file as PIL's exif_transpose shows it, stored losslessly without an orientation."""
    return encode(ImageOps.exif_transpose(opened(data)).convert("RGB"), "PNG")


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_orient_is_exactly_exif_transpose(orientation, image_format):
    data = encode(photo((7, 5)), image_format, orientation)  # not square, so every turn shows
    image = opened(data)
    assert presets.exif_orientation(image) == orientation
    expected = F.pil_to_tensor(ImageOps.exif_transpose(opened(data)).convert("RGB"))
    ours = presets.orient(F.pil_to_tensor(image.convert("RGB")), presets.exif_orientation(image))
    assert torch.equal(ours, expected)
    assert presets.oriented_size(image.size, orientation) == (expected.shape[2], expected.shape[1])


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize(("size", "image_format"), [((60, 40), "PNG"), ((640, 480), "JPEG")])
def test_eval_preset_sees_the_upright_image(orientation, size, image_format):
    """640x480 JPEG: decoded at reduced scale (draft) and turned afterwards, as upright as a PNG of it."""
    data = encode(photo(size), image_format, orientation, quality=95)
    preset = presets.EvalPreset(32)
    ours = preset.uint8(opened(data))
    upright = preset.uint8(opened(upright_png(data)))
    if image_format == "PNG":
        assert torch.equal(ours, upright)
    else:  # reduced-scale decode vs a full one: resampling noise only, where a turn moves everything
        assert (ours.float() - upright.float()).abs().mean() < 2.0
        wrong_way = preset.uint8(opened(encode(photo(size), "PNG")))
        assert (wrong_way.float() - upright.float()).abs().mean() > 10.0


@pytest.mark.parametrize("orientation", [5, 6, 8])
def test_train_preset_draws_its_box_on_the_upright_image(orientation):
    data = encode(photo((64, 40)), "PNG", orientation)
    upright = upright_png(data)
    preset = presets.TrainPreset(32)
    for seed in range(10):
        torch.manual_seed(seed)
        ours = preset.uint8(opened(data))
        torch.manual_seed(seed)
        assert torch.equal(ours, preset.uint8(opened(upright)))


def test_train_preset_turns_a_reduced_scale_jpeg_crop_upright():
    data = encode(photo((512, 384)), "JPEG", 6, quality=95)
    upright = upright_png(data)
    preset = presets.TrainPreset(32, scale=(0.9, 1.0))  # large boxes: decoded at 1/4 or 1/8 scale
    for seed in range(5):
        torch.manual_seed(seed)
        ours = preset.uint8(opened(data))
        torch.manual_seed(seed)
        reference = preset.uint8(opened(upright))
        assert (ours.float() - reference.float()).abs().mean() < 3.0


def test_ordinary_shapes_are_resized_exactly_as_torchvision_does():
    preset = presets.EvalPreset(32)
    reference = v2.Compose([v2.Resize(preset.resize_size, antialias=True), v2.CenterCrop(32)])
    generator = torch.Generator().manual_seed(0)
    for height, width in [(48, 64), (64, 48), (30, 120), (120, 30), (7, 9)]:  # up to 4:1
        pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        assert torch.equal(preset.geometry(pixels), reference(pixels))


@pytest.mark.parametrize(("height", "width"), [(3, 1200), (1200, 3), (1, 60_000), (50_000, 2)])
def test_a_thin_image_is_cropped_to_four_to_one_before_the_resize(height, width):
    """What the network sees is the middle of the strip, as the full resize would show it."""
    pixels = torch.arange(height * width, dtype=torch.int64).reshape(1, height, width)
    pixels = (pixels * 7 % 251).to(torch.uint8).expand(3, height, width)
    bounded = presets.centre_to_aspect_ratio(pixels)
    short, long = min(height, width), max(height, width)
    assert max(bounded.shape[1:]) == min(long, 4 * short)
    assert bounded.untyped_storage().data_ptr() == pixels.untyped_storage().data_ptr()  # a view, no copy
    preset = presets.EvalPreset(32)
    crop = preset.geometry(pixels)
    assert crop.shape == (3, 32, 32) and crop.is_contiguous()
    if long <= 1200:  # small enough to resize whole for comparison
        reference = v2.Compose([v2.Resize(preset.resize_size, antialias=True), v2.CenterCrop(32)])(pixels)
        assert (crop.float() - reference.float()).abs().mean() < 8.0


def test_a_crop_owns_its_memory_instead_of_viewing_the_resized_image():
    crop = presets.EvalPreset(32).geometry(torch.zeros((3, 100, 300), dtype=torch.uint8))
    assert crop.untyped_storage().nbytes() == 3 * 32 * 32


def test_a_large_png_is_shrunk_by_a_whole_factor_before_the_resize():
    """Formats without a reduced-scale decode are box-reduced once decoded: close to the full resize."""
    preset = presets.EvalPreset(32)
    image = photo((400, 300))
    assert presets.shrink_to(image, preset.resize_size).size == (50, 38)  # 300 // 37 = 8, rounded up
    ours = preset.uint8(opened(encode(image, "PNG")))
    full = v2.Compose([v2.Resize(preset.resize_size, antialias=True), v2.CenterCrop(32)])(
        F.pil_to_tensor(image)
    )
    assert (ours.float() - full.float()).abs().mean() < 2.0
