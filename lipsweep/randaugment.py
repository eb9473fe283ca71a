"""Batched RandAugment with torchvision semantics, for uint8 image batches.

This reimplements ``torchvision.transforms.RandAugment`` (same 14 ops, same
magnitude tables, signs drawn with probability 0.5, nearest interpolation,
fill 0 by default) so that a whole ``(B, C, H, W)`` uint8 batch is augmented
with tensor code: every image draws its own ops, images are grouped by op and
each op is applied to its group at once.

Pixel arithmetic follows torchvision's PIL backend (the one a standard
``ImageFolder`` pipeline uses), which is bit-exact with Pillow:

* blends (Brightness, Color, Contrast, Sharpness) use Pillow's float32
  ``degenerate + alpha * (image - degenerate)`` with truncation, Pillow's
  rounded integer luma (``convert("L")``) and its rounded grayscale mean;
* geometric ops sample the source pixel ``floor(M @ (x + 0.5, y + 0.5))``
  like ``Image.transform(..., NEAREST)``, with torchvision's inverse affine
  matrices (and Pillow's ``Image.rotate`` matrix for Rotate).

torchvision's tensor backend differs from this only by rounding (at most one
grey level in blends, and a different tie rule in nearest sampling).
"""

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["OP_NAMES", "apply_op", "draw_ops", "op_magnitude", "rand_augment"]

OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)

Fill = int | Sequence[int]
Matrix = tuple[float, float, float, float, float, float]


# --------------------------------------------------------------------------
# Magnitudes
# --------------------------------------------------------------------------


def _magnitude_bins(num_bins: int, height: int, width: int) -> dict[str, tuple[torch.Tensor, bool]]:
    """torchvision's RandAugment augmentation space: op -> (magnitudes, signed)."""
    linspace = torch.linspace
    zero = torch.tensor(0.0)
    return {
        "Identity": (zero, False),
        "ShearX": (linspace(0.0, 0.3, num_bins), True),
        "ShearY": (linspace(0.0, 0.3, num_bins), True),
        "TranslateX": (linspace(0.0, 150.0 / 331.0 * width, num_bins), True),
        "TranslateY": (linspace(0.0, 150.0 / 331.0 * height, num_bins), True),
        "Rotate": (linspace(0.0, 30.0, num_bins), True),
        "Brightness": (linspace(0.0, 0.9, num_bins), True),
        "Color": (linspace(0.0, 0.9, num_bins), True),
        "Contrast": (linspace(0.0, 0.9, num_bins), True),
        "Sharpness": (linspace(0.0, 0.9, num_bins), True),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int(), False),
        "Solarize": (linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (zero, False),
        "Equalize": (zero, False),
    }


def op_magnitude(
    op_name: str, magnitude: int, num_magnitude_bins: int, height: int, width: int
) -> tuple[float, bool]:
    """Unsigned magnitude value of ``op_name`` at bin ``magnitude`` and whether it is signed."""
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"magnitude {magnitude} outside [0, {num_magnitude_bins})")
    values, signed = _magnitude_bins(num_magnitude_bins, height, width)[op_name]
    value = float(values[magnitude].item()) if values.ndim > 0 else 0.0
    return value, signed


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to (B, 1, 1, 1) for broadcasting over images."""
    return values.view(-1, 1, 1, 1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert("L")``: rounded ITU-R 601-2 luma, (B, 1, H, W) uint8."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.int().unbind(1)
    luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return luma.unsqueeze(1).to(torch.uint8)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, images, factor)`` in float32, truncated."""
    alpha = _per_image(factors.to(torch.float32))
    diff = (images.int() - degenerate.int()).float()
    out = degenerate.float() + alpha * diff
    return out.clamp(0.0, 255.0).to(torch.uint8)


def _fill_tensor(fill: Fill, channels: int) -> torch.Tensor:
    """Per-channel fill values as a (1, C, 1, 1) uint8 tensor."""
    values = [fill] * channels if isinstance(fill, int) else list(fill)
    if len(values) != channels:
        raise ValueError(f"fill has {len(values)} values for {channels} channels")
    return torch.tensor(values, dtype=torch.uint8).view(1, channels, 1, 1)


# --------------------------------------------------------------------------
# Geometric ops
# --------------------------------------------------------------------------


def _inverse_affine_matrix(
    center: tuple[float, float], translate: tuple[float, float], shear: tuple[float, float]
) -> Matrix:
    """torchvision's inverse affine matrix (no rotation, unit scale), output -> input."""
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(-sy) / math.cos(sy)
    b = -math.cos(-sy) * math.tan(sx) / math.cos(sy)
    c = math.sin(-sy) / math.cos(sy)
    d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + 1.0
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return (m[0], m[1], m[2], m[3], m[4], m[5])


def _rotate_matrix(angle: float, height: int, width: int) -> Matrix:
    """Pillow's ``Image.rotate`` inverse matrix: counter-clockwise about the centre."""
    theta = -math.radians(angle % 360.0)
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    cx, cy = width / 2, height / 2
    return (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)


def _op_matrix(op_name: str, value: float, height: int, width: int) -> Matrix:
    """Inverse affine matrix torchvision (PIL path) uses for a geometric op."""
    centre = (width * 0.5, height * 0.5)
    shear = math.degrees(math.atan(value))
    if op_name == "ShearX":
        return _inverse_affine_matrix((0.0, 0.0), (0.0, 0.0), (shear, 0.0))
    if op_name == "ShearY":
        return _inverse_affine_matrix((0.0, 0.0), (0.0, 0.0), (0.0, shear))
    if op_name == "TranslateX":
        return _inverse_affine_matrix(centre, (float(int(value)), 0.0), (0.0, 0.0))
    if op_name == "TranslateY":
        return _inverse_affine_matrix(centre, (0.0, float(int(value))), (0.0, 0.0))
    if op_name == "Rotate":
        return _rotate_matrix(value, height, width)
    raise ValueError(f"{op_name} is not a geometric op")


def _source_pixels(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flat source index per output pixel for (N, 6) float64 matrices, -1 outside.

    Like Pillow's NEAREST transform: the source is ``floor(M @ (x + 0.5, y + 0.5))``.
    """
    n = matrices.shape[0]
    ys = torch.arange(height, dtype=torch.float64).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float64).view(1, 1, width) + 0.5
    m = matrices.view(n, 6, 1, 1).unbind(1)
    src_x = torch.floor(m[0] * xs + m[1] * ys + m[2])
    src_y = torch.floor(m[3] * xs + m[4] * ys + m[5])
    valid = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    index = src_y.long() * width + src_x.long()
    return torch.where(valid, index, -1).view(n, height * width)


def _warp(images: torch.Tensor, index: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Gather each image's pixels at its (H * W) source index; -1 takes ``fill``."""
    b, c, h, w = images.shape
    gather_index = index.clamp(min=0).unsqueeze(1).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, gather_index).view(b, c, h, w)
    inside = (index >= 0).view(b, 1, h, w)
    return torch.where(inside, out, _fill_tensor(fill, c))


def _geometric(op_name: str) -> Callable[[torch.Tensor, torch.Tensor, Fill], torch.Tensor]:
    """Build the batched apply function of a geometric op."""

    def apply(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
        h, w = images.shape[-2:]
        # one sampling grid per distinct value (at most two in rand_augment)
        unique, inverse = torch.unique(values, return_inverse=True)
        rows = [_op_matrix(op_name, float(v), h, w) for v in unique.tolist()]
        index = _source_pixels(torch.tensor(rows, dtype=torch.float64), h, w)
        return _warp(images, index[inverse], fill)

    return apply


# --------------------------------------------------------------------------
# Colour and pixel ops
# --------------------------------------------------------------------------


def _identity(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Return the images unchanged."""
    return images


def _brightness(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Blend with black by factor ``1 + value``."""
    return _blend(torch.zeros_like(images), images, 1.0 + values)


def _color(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Blend with the grayscale image by factor ``1 + value`` (no-op for C=1)."""
    if images.shape[1] == 1:
        return images
    return _blend(_grayscale(images), images, 1.0 + values)


def _contrast(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Blend with the rounded mean of the grayscale image by factor ``1 + value``."""
    gray = _grayscale(images)
    mean = gray.sum(dim=(1, 2, 3), dtype=torch.int64).double() / gray[0].numel()
    degenerate = torch.floor(mean + 0.5).to(torch.uint8)
    return _blend(_per_image(degenerate).expand_as(images), images, 1.0 + values)


def _sharpness(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Blend with the 3x3 SMOOTH filtered image (border kept) by ``1 + value``."""
    h, w = images.shape[-2:]
    if h <= 2 or w <= 2:
        return images
    wide = images.to(torch.int16)
    rows = wide[..., :-2] + wide[..., 1:-1] + wide[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    sums = box + 4 * wide[..., 1:-1, 1:-1]  # kernel 1 1 1 / 1 5 1 / 1 1 1, at most 3315
    smooth = torch.div(2 * sums + 13, 26, rounding_mode="floor")  # round(sums / 13)
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.to(torch.uint8)
    return _blend(degenerate, images, 1.0 + values)


def _posterize(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Keep the top ``int(value)`` bits of every pixel."""
    bits = values.long()
    if bool(((bits < 0) | (bits > 8)).any()):
        raise ValueError(f"posterize bits must be in [0, 8], got {bits.tolist()}")
    mask = ~((1 << (8 - bits)) - 1) & 0xFF
    return images & _per_image(mask.to(torch.uint8))


def _solarize(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Invert the pixels at or above the threshold ``value``."""
    threshold = torch.ceil(values).clamp(0, 256).to(torch.int16)  # integer pixels
    return torch.where(images >= _per_image(threshold), 255 - images, images)


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map every channel through its own (B * C, 256) lookup table."""
    b, c, h, w = images.shape
    pixels = images.reshape(b * c, h * w).long()
    return lut.gather(1, pixels).to(torch.uint8).view(b, c, h, w)


def _autocontrast(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Stretch each channel to [0, 255] like ``ImageOps.autocontrast``."""
    b, c = images.shape[:2]
    flat = images.reshape(b * c, -1)
    lo = flat.amin(dim=1, keepdim=True).double()
    hi = flat.amax(dim=1, keepdim=True).double()
    # a true division: ``255.0 / tensor`` is a reciprocal product in torch
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1.0)
    offset = -lo * scale
    levels = torch.arange(256, dtype=torch.float64)
    lut = torch.trunc(levels * scale + offset).clamp(0, 255)
    return _apply_lut(images, torch.where(hi > lo, lut, levels).long())


def _equalize(images: torch.Tensor, values: torch.Tensor, fill: Fill) -> torch.Tensor:
    """Per-channel histogram equalisation like ``ImageOps.equalize``."""
    b, c, h, w = images.shape
    pixels = images.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.int64)
    hist.scatter_add_(1, pixels, torch.ones_like(pixels))
    levels = torch.arange(256)
    last = torch.where(hist > 0, levels, 0).amax(dim=1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    before = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    return _apply_lut(images, torch.where(step > 0, lut, levels))


_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, Fill], torch.Tensor]] = {
    "Identity": _identity,
    "ShearX": _geometric("ShearX"),
    "ShearY": _geometric("ShearY"),
    "TranslateX": _geometric("TranslateX"),
    "TranslateY": _geometric("TranslateY"),
    "Rotate": _geometric("Rotate"),
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> None:
    """Validate a uint8 (B, C, H, W) batch with C in {1, 3}."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")


def apply_op(
    images: torch.Tensor, op_name: str, magnitude: float | torch.Tensor, fill: Fill = 0
) -> torch.Tensor:
    """Apply one RandAugment op to every image of a uint8 (B, C, H, W) batch.

    ``magnitude`` is the op's signed value as torchvision's ``_apply_op`` gets
    it (shear factor, pixels, degrees, enhance offset, bits, threshold): a
    float for the whole batch or a (B,) tensor with one value per image.
    """
    _check_images(images)
    if op_name not in _OPS:
        raise ValueError(f"unknown op {op_name!r}")
    values = torch.as_tensor(magnitude, dtype=torch.float64).expand(images.shape[0])
    if images.shape[0] == 0:
        return images.clone()
    return _OPS[op_name](images, values.contiguous(), fill)


def draw_ops(
    batch: int, num_ops: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw RandAugment's random choices for a batch.

    Returns ``(ops, negate)``, both (num_ops, batch): indices into ``OP_NAMES``
    (uniform) and whether a signed op's magnitude is negated (probability 0.5).
    """
    ops = torch.empty(num_ops, batch, dtype=torch.int64)
    negate = torch.empty(num_ops, batch, dtype=torch.bool)
    for round_ in range(num_ops):
        ops[round_] = torch.randint(len(OP_NAMES), (batch,), generator=generator)
        negate[round_] = torch.randint(2, (batch,), generator=generator).bool()
    return ops, negate


def rand_augment(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: int = 9,
    num_magnitude_bins: int = 31,
    generator: torch.Generator | None = None,
    fill: Fill = 0,
) -> torch.Tensor:
    """RandAugment a uint8 (B, C, H, W) batch; every image draws its own ops.

    For each of ``num_ops`` rounds every image picks one of the 14 ops
    uniformly and, for signed ops, negates the magnitude with probability 0.5,
    as ``torchvision.transforms.RandAugment`` does per call. The choices come
    from :func:`draw_ops` with ``generator``.
    """
    _check_images(images)
    batch, _, height, width = images.shape
    table = {
        name: op_magnitude(name, magnitude, num_magnitude_bins, height, width) for name in OP_NAMES
    }
    ops, negate = draw_ops(batch, num_ops, generator)
    out = images.clone()
    for round_ in range(num_ops):
        for index, op_name in enumerate(OP_NAMES):
            chosen = (ops[round_] == index).nonzero().squeeze(1)
            if chosen.numel() == 0 or op_name == "Identity":
                continue
            value, signed = table[op_name]
            values = torch.full((chosen.numel(),), value, dtype=torch.float64)
            if signed:
                values = torch.where(negate[round_, chosen], -values, values)
            out[chosen] = _OPS[op_name](out[chosen], values, fill)
    return out
