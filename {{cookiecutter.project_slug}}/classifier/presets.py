"""Image transforms for training and evaluation, in the style of torchvision's references.

Serving rebuilds `EvalPreset` from the model's metadata, so the endpoint sees
exactly the tensor that evaluation saw during training. Both presets apply the
file's EXIF orientation first, as `PIL.ImageOps.exif_transpose` does, so a
portrait phone photo is seen upright in training and on the endpoint alike.
"""

from __future__ import annotations

import torch
from PIL import ExifTags, Image
from torch.nn.functional import interpolate
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from classifier.choices import resize_size_for

try:  # Deprecated since torchvision 0.29 (for TorchCodec); where it is gone, Pillow decodes instead.
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:
    decode_jpeg = None

# Formats that Pillow and libjpeg can decode at reduced scale (MPO: a JPEG with extra frames).
JPEG_FORMATS = ("JPEG", "MPO")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The longest side, in multiples of the shorter, that the evaluation resize is given. A longer image
# is cropped around its centre to this ratio first: the centre crop keeps only a square of it anyway,
# and resizing a 3 x 30000 strip whole would allocate gigabytes (its shorter side grows to 256).
# Photos and panoramas up to 4:1 are resized exactly as torchvision's Resize + CenterCrop do.
MAX_ASPECT_RATIO = 4
# `Image.transpose` for each EXIF orientation, as `PIL.ImageOps.exif_transpose` maps them.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations that swap width and height.
_SWAPS_SIDES = {5, 6, 7, 8}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; 16-bit greyscale is scaled, not clipped.

    `convert("RGB")` handles L, P, LA, RGBA (drops alpha), CMYK and 16-bit RGB,
    but clips 16-bit greyscale (`I;16`, `I`) at 255, which turns it white.
    """
    if image.mode == "RGB":
        image.load()  # decode here, as convert would (callers catch decode errors), without its copy
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    return image.convert("RGB")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 = as stored), read as `ImageOps.exif_transpose` reads it.

    For a JPEG or WebP it comes from the header; a PNG may keep it after the pixels, so Pillow
    decodes the PNG to find it (decoding it is the next step anyway).
    """
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) of the upright image."""
    width, height = size
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(..., H, W) pixels made upright: exactly `exif_transpose`'s transpose, on a tensor.

    On the decoded tensor rather than the PIL image so that a JPEG can still be decoded at reduced
    scale (`Image.draft`), which a transpose of the lazily opened image would prevent.
    """
    if orientation in (2, 4):
        return pixels.flip(-1 if orientation == 2 else -2)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return pixels.rot90(-1, dims=(-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return pixels.rot90(1, dims=(-2, -1))
    return pixels


def centre_to_aspect_ratio(pixels: torch.Tensor, max_ratio: float = MAX_ASPECT_RATIO) -> torch.Tensor:
    """The centre of (..., H, W) `pixels` whose longer side is at most `max_ratio` times the shorter.

    A view, no copy: what a resize of the shorter side followed by a centre crop keeps lies inside it.
    """
    height, width = pixels.shape[-2:]
    short = min(height, width)
    longest = max(1, int(short * max_ratio))
    if height > longest:
        top = (height - longest) // 2
        return pixels[..., top : top + longest, :]
    if width > longest:
        left = (width - longest) // 2
        return pixels[..., left : left + longest]
    return pixels


def decode_pixels(image: Image.Image, min_side: int) -> torch.Tensor:
    """The pixels as uint8 CHW RGB, skipping detail that a resize to `min_side` would throw away.

    A JPEG whose shorter side is at least twice `min_side` is decoded at 1/2, 1/4 or 1/8 scale
    (`Image.draft` makes libjpeg do it) while its shorter side stays >= `min_side`. Other formats
    cannot decode at reduced scale, so once decoded they are shrunk the same way, by averaging
    whole blocks of pixels (`Image.reduce`): the resize after it then works on about the size it
    outputs, and its buffers follow the crop's size rather than the file's. A JPEG between one and
    two times `min_side` is decoded whole, by `full_pixels`.
    """
    if image.format in JPEG_FORMATS:
        draft_size = _draft_size(image, min_side)
        if draft_size is None:
            return full_pixels(image)
        image.draft("RGB", draft_size)
    return F.pil_to_tensor(shrink_to(to_rgb(image), min_side))


def decoded_pixels(image: Image.Image, min_side: int) -> int:
    """How many pixels `decode_pixels(image, min_side)` has the decoder write, from the header alone.

    What a decode's time and memory follow: the whole frame for PNG, WebP, GIF and BMP, the reduced
    size for a JPEG that `Image.draft` shrinks (libjpeg's 1/2, 1/4 or 1/8, chosen as Pillow does).
    """
    width, height = image.size
    draft_size = _draft_size(image, min_side) if image.format in JPEG_FORMATS else None
    if draft_size is None:
        return width * height
    ratio = min(width // draft_size[0], height // draft_size[1])
    reduction = next(factor for factor in (8, 4, 2, 1) if ratio >= factor)
    return -(-width // reduction) * -(-height // reduction)


def _draft_size(image: Image.Image, min_side: int) -> tuple[int, int] | None:
    """The size `decode_pixels` asks `Image.draft` for; None where the JPEG is decoded whole (its
    shorter side is under twice `min_side`, so no reduction would keep it >= `min_side`)."""
    width, height = image.size
    if min(width, height) < 2 * min_side:
        return None
    scale = min(width, height) / max(min_side, 1)
    return int(width / scale), int(height / scale)


def shrink_to(image: Image.Image, min_side: int) -> Image.Image:
    """`image` reduced by the largest whole factor that keeps its shorter side >= `min_side`."""
    factor = min(image.size) // max(min_side, 1)
    return image.reduce(factor) if factor >= 2 else image


def full_pixels(image: Image.Image) -> torch.Tensor:
    """Every pixel as uint8 CHW RGB.

    JPEGs go through torchvision's `decode_jpeg`: the same libjpeg-turbo pixels as Pillow in
    about half the time, without Pillow's RGBX buffer and the copy out of it.
    """
    if image.format in JPEG_FORMATS:
        pixels = _decode_jpeg_bytes(image)
        if pixels is not None:
            return pixels
    return F.pil_to_tensor(to_rgb(image))


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
        # In three steps so a training loader can ship small uint8 images from its workers and
        # scale whole batches on the GPU, and the endpoint can decode where it answers bad files.
        self._resize_crop = T.Compose([T.Resize(self.resize_size, antialias=True), T.CenterCrop(crop_size)])
        self.scaling = Scaling(mean, std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.scaling(self.uint8(image))

    def uint8(self, image: Image.Image) -> torch.Tensor:
        """The resized, cropped uint8 CHW image; `scaling` (on one image or a batch) finishes it."""
        return self.geometry(self.decode(image))

    def decode(self, image: Image.Image) -> torch.Tensor:
        """The upright pixels as uint8 CHW, at reduced scale where the resize allows; `geometry` follows."""
        orientation = exif_orientation(image)
        return orient(decode_pixels(image, self.resize_size), orientation)

    def kept_bytes(self, image: Image.Image) -> int:
        """Size of `to_keep(image)`: the crop itself, as evaluation draws nothing at random."""
        return self.crop_size * self.crop_size * 3

    def to_keep(self, image: Image.Image) -> torch.Tensor:
        """What a loader may keep from one epoch to the next: `uint8(image)` (see TrainPreset.kept_bytes)."""
        return self.uint8(image)

    def from_kept(self, pixels: torch.Tensor) -> torch.Tensor:
        """`uint8` of the image whose `to_keep` is `pixels`: planar CHW in memory of its own."""
        return pixels.contiguous()

    def geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decoded pixels -> crop_size x crop_size, uint8 CHW, in memory of its own.

        At most `MAX_ASPECT_RATIO` : 1 reaches the resize, so its output is bounded by the crop's
        size whatever the image's shape. The crop is copied out of the resized buffer (CenterCrop
        returns a view), so a batch of crops does not keep every resized image alive.
        """
        return self._resize_crop(centre_to_aspect_ratio(pixels)).clone(memory_format=torch.contiguous_format)


class TrainPreset:
    """Random resized crop and horizontal flip (`uint8`), then the same scaling as `EvalPreset`.

    The same augmentation as torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`, in an
    order that decodes less: the crop box is drawn from the header's size first, then only as
    much of the JPEG is decoded as that box needs (see `resized_crop`). Training always scales
    whole batches on the device, so there is no per-image call that does both.
    """

    def __init__(
        self,
        crop_size: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        hflip_prob: float = 0.5,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.crop_size = crop_size
        self.scale = scale
        self.ratio = ratio
        self.hflip_prob = hflip_prob
        self.scaling = Scaling(mean, std)

    def uint8(self, image: Image.Image) -> torch.Tensor:
        """The randomly cropped, flipped uint8 CHW image; `scaling` (on one image or a batch) finishes it.

        Stored pixel-interleaved (see `interleaved`): a loader stacks these into a channels-last batch.
        """
        # The box is drawn on the upright image's size, read from the header: known before any pixel
        # is decoded.
        orientation = exif_orientation(image)
        box = self._box(*oriented_size(image.size, orientation))
        return self._flip(resized_crop(image, box, self.crop_size, orientation))

    def kept_bytes(self, image: Image.Image) -> int | None:
        """Size of `to_keep(image)`, from the header, where `from_kept` of it is exactly `uint8(image)`.

        A loader may keep `to_keep(image)` from one epoch to the next and draw each epoch's random
        crop from it (`from_kept`) instead of decoding the file again. None for a JPEG with a shorter
        side of at least twice the crop: `uint8` decodes some of its boxes at reduced scale, which a
        crop of the full pixels would not reproduce bit for bit.
        """
        if image.format in JPEG_FORMATS and min(image.size) >= 2 * self.crop_size:
            return None
        return image.width * image.height * 3

    def to_keep(self, image: Image.Image) -> torch.Tensor:
        """The whole upright image, uint8 CHW: what `from_kept` crops."""
        return orient(full_pixels(image), exif_orientation(image))

    def from_kept(self, pixels: torch.Tensor) -> torch.Tensor:
        """`uint8` of the image whose `to_keep` is `pixels`, drawing the same random numbers."""
        left, top, right, bottom = self._box(pixels.shape[-1], pixels.shape[-2])
        return self._flip(_resize_interleaved(pixels[:, top:bottom, left:right], self.crop_size))

    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (left, top, right, bottom) on an upright image of that size.

        get_params reads only the size, so an empty tensor of that size stands in for the pixels.
        """
        size_only = torch.empty((0, height, width), dtype=torch.uint8)
        top, left, box_height, box_width = RandomResizedCrop.get_params(
            size_only, list(self.scale), list(self.ratio)
        )
        return left, top, left + box_width, top + box_height

    def _flip(self, crop: torch.Tensor) -> torch.Tensor:
        # As RandomHorizontalFlip draws it, without its 0.1 ms of dispatch per image.
        if torch.rand(1).item() < self.hflip_prob:
            crop = F.horizontal_flip(crop)
        return interleaved(crop)


def resized_crop(
    image: Image.Image, box: tuple[int, int, int, int], size: int, orientation: int = 1
) -> torch.Tensor:
    """`box` (left, top, right, bottom; full-size pixels of the upright image) resized to size x size,
    as uint8 CHW RGB; `orientation` is the file's EXIF orientation (`exif_orientation`).

    Exactly torchvision's `resized_crop` (bilinear, antialiased) of the upright image, except that a
    JPEG is decoded at the smallest scale (1/2, 1/4, 1/8, via `Image.draft`) at which the box still
    spans `size` pixels: the resize then still only shrinks, and the result matches a full decode
    within resampling noise (less than bilinear and bicubic differ).
    """
    left, top, right, bottom = box
    reduction = 1
    if image.format in JPEG_FORMATS:
        while reduction < 8 and min(right - left, bottom - top) // (reduction * 2) >= size:
            reduction *= 2
    if reduction == 1:
        upright = orient(full_pixels(image), orientation)
        return _resize_interleaved(upright[:, top:bottom, left:right], size)
    full_width, full_height = oriented_size(image.size, orientation)
    image.draft("RGB", (image.width // reduction, image.height // reduction))
    reduced = to_rgb(image)
    if orientation in EXIF_TRANSPOSE:  # small now: the transpose costs little at this scale
        reduced = reduced.transpose(EXIF_TRANSPOSE[orientation])
    # A fractional box in the reduced image: rounding it to whole pixels would shift the crop.
    x_scale, y_scale = reduced.width / full_width, reduced.height / full_height
    reduced_box = (left * x_scale, top * y_scale, right * x_scale, bottom * y_scale)
    return F.pil_to_tensor(reduced.resize((size, size), Image.Resampling.BILINEAR, box=reduced_box))


def interleaved(pixels: torch.Tensor) -> torch.Tensor:
    """(C, H, W) `pixels` in memory of their own, stored pixel by pixel (H, W, C) as decoders write them.

    A no-op for what the decoders and `_resize_interleaved` return. A batch stacked from such images
    is channels-last, what the network runs in on a GPU, and `Scaling` reads it as fast as planar
    images. Reordering every crop to planar (C, H, W) costs about as much as resizing it (0.09 ms
    of 0.2 ms per 224 px crop, on one core).
    """
    return pixels.movedim(0, -1).contiguous().movedim(-1, 0)


def is_interleaved(images: torch.Tensor) -> bool:
    """Whether (..., C, H, W) `images` are stored pixel by pixel: channels-last for a batch."""
    return images.dim() >= 3 and images.movedim(-3, -1).is_contiguous()


def _resize_interleaved(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, H, W) -> (C, size, size), bilinear and antialiased, the same bytes as torchvision's `resize`.

    Given and returned pixel-interleaved, the layout the uint8 resize kernel works in: `F.resize`
    of a planar result converts the crop to it and the output back, twice the time.
    """
    batch = pixels.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return interpolate(batch, size=[size, size], mode="bilinear", antialias=True, align_corners=False)[0]


def _decode_jpeg_bytes(image: Image.Image) -> torch.Tensor | None:
    """The whole JPEG through `decode_jpeg`; None where Pillow must do it (no file, a truncated one)."""
    if decode_jpeg is None or image.fp is None:
        return None
    image.fp.seek(0)
    data = bytearray(image.fp.read())
    try:
        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        # Truncated files, or CMYK on an old torchvision: Pillow decodes them or raises its usual OSError.
        image.fp.seek(0)
        return None


class Scaling(torch.nn.Module):
    """uint8 [0, 255] -> float, normalised: (x / 255 - mean) / std, on (..., C, H, W), so on batches too.

    The same as ToDtype(scale=True) + Normalize, in one conversion and in-place passes
    (x * (1 / (255 std)) - mean / std) instead of four passes and two temporaries: a third of the
    time on a CPU, where a loader's main process shares the cores with its workers. The result keeps
    the input's layout. Planar images are scaled channel by channel with Python-number factors;
    interleaved ones (channels-last) row by row, with the factors repeated along a row, because a
    per-channel pass over interleaved memory is a strided loop three times slower.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.factors = [1 / (255 * s) for s in std]
        self.offsets = [m / s for m, s in zip(mean, std, strict=True)]
        # (device, row width) -> factors and offsets along one row of interleaved pixels: a few KB each.
        self._row_constants: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"scaling expects uint8 images, got {images.dtype}")
        scaled = images.float()  # keeps the layout
        if is_interleaved(images) and images.numel() and images.shape[-3] == len(self.factors):
            rows = scaled.movedim(-3, -1).view(-1, images.shape[-1] * images.shape[-3])
            factors, offsets = self._row(images.device, images.shape[-1])
            rows.mul_(factors).sub_(offsets)
            return scaled
        for channel, (factor, offset) in enumerate(zip(self.factors, self.offsets, strict=True)):
            scaled[..., channel, :, :].mul_(factor).sub_(offset)
        return scaled

    def _row(self, device: torch.device, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, width)
        if key not in self._row_constants:
            self._row_constants[key] = tuple(
                torch.tensor(values, dtype=torch.float32, device=device).repeat(width)
                for values in (self.factors, self.offsets)
            )
        return self._row_constants[key]
