"""Grad-CAM: which regions of an image drove a classifier's top label.

The gradient of the top label's logit with respect to a late feature map weights that map's
channels; their weighted sum, clipped at zero, is the heatmap (Selvaraju et al., 2017). Where:

- CNNs (ResNet, ConvNeXt, EfficientNet, ...): the last stage's feature map.
- Swin-style models: their last stage, reshaped to a map.
- ViT-family models: the patch tokens *entering* the last transformer block. The block's own
  output patch tokens never reach a CLS-token classifier (the head reads the CLS token only), so
  their gradient is zero; one attention step earlier is where patches feed the CLS token.

Images of a batch are independent (eval mode), so one backward pass explains the whole batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import pixel_box

# Heatmap overlays are at most this many pixels on their longest side (the original image's
# size when it is smaller): enough to see, and a bounded PNG per image.
HEATMAP_MAX_SIDE = 1024


def grad_cam(model: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The batch's logits and, per image, a heatmap in [0, 1] over the model's feature grid."""
    with torch.enable_grad():
        pixels = pixel_values.detach().requires_grad_(True)  # builds the graph whatever params do
        outputs = model(pixel_values=pixels, output_hidden_states=True)
        features, grid = _explained_features(model, outputs, pixels.shape[-2:])
        logits = outputs.logits
        top = logits.argmax(dim=-1)
        (gradients,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), features)
    maps = [_cam(f, g, grid) for f, g in zip(features.detach(), gradients, strict=True)]
    return logits.detach(), maps


def _explained_features(
    model: Any, outputs: Any, image_size: torch.Size
) -> tuple[torch.Tensor, tuple[int, int] | None]:
    reshaped = getattr(outputs, "reshaped_hidden_states", None)
    if reshaped:
        return reshaped[-1], None
    last = outputs.hidden_states[-1]
    if last.ndim == 4:  # (batch, channels, height, width): a CNN stage
        return last, None
    patch = getattr(model.config, "patch_size", None)
    if not isinstance(patch, int):
        raise ValueError("cannot locate this model's patch grid for Grad-CAM")
    grid = (image_size[0] // patch, image_size[1] // patch)
    return outputs.hidden_states[-2], grid


def _cam(features: torch.Tensor, gradients: torch.Tensor, grid: tuple[int, int] | None) -> Any:
    features, gradients = features.float(), gradients.float()
    if grid is None:  # (channels, height, width)
        weights = gradients.mean(dim=(1, 2))
        cam = torch.einsum("c,chw->hw", weights, features)
    else:  # (tokens, width): patch tokens are the last grid cells; CLS/register tokens lead
        cells = grid[0] * grid[1]
        patches, patch_gradients = features[-cells:], gradients[-cells:]
        weights = patch_gradients.mean(dim=0)
        cam = (patches @ weights).reshape(grid)
    cam = cam.clamp(min=0)
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).cpu()


def overlay_size(photo: tuple[int, int]) -> tuple[int, int]:
    """An overlay's (width, height): the photo's own (after EXIF rotation), shrunk to at most
    HEATMAP_MAX_SIDE on its longest side; never the decoded image's, which a draft shrank."""
    scale = min(1.0, HEATMAP_MAX_SIDE / max(photo))
    return max(1, math.floor(photo[0] * scale)), max(1, math.floor(photo[1] * scale))


# Where the model's view lies in the photo: (left, top, right, bottom) as fractions of its sides.
Region = tuple[float, float, float, float]
WHOLE_PHOTO: Region = (0.0, 0.0, 1.0, 1.0)


def seen_region(processor: Any, photo: tuple[int, int]) -> Region:
    """The part of the photo the model saw, so the map is drawn where it belongs: a centre crop
    after a shortest-edge resize (CLIP, BiT, ResNet/ConvNeXt's crop_pct) sees the middle only;
    a resize to a fixed height and width sees the whole photo."""
    size = dict(getattr(processor, "size", None) or {})
    if "shortest_edge" not in size:
        return WHOLE_PHOTO
    shortest = size["shortest_edge"]
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct and shortest < 384:  # ConvNeXt: resize to shortest / crop_pct, crop shortest
        resized_short, crop = shortest / crop_pct, (shortest, shortest)
    elif getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        crop_size = dict(processor.crop_size)
        resized_short, crop = shortest, (crop_size["width"], crop_size["height"])
    else:
        return WHOLE_PHOTO
    scale = resized_short / min(photo)
    kept = [min(1.0, side / (length * scale)) for side, length in zip(crop, photo, strict=True)]
    return ((1 - kept[0]) / 2, (1 - kept[1]) / 2, (1 + kept[0]) / 2, (1 + kept[1]) / 2)


def region_box(region: Region, photo: tuple[int, int]) -> dict[str, float]:
    """A region in the photo's pixels, as detection boxes are given."""
    left, top, right, bottom = region
    width, height = photo
    return pixel_box((left * width, top * height, right * width, bottom * height))


def overlay(image: Image.Image, cam: torch.Tensor, region: Region = WHOLE_PHOTO) -> Image.Image:
    """The heatmap over the image (at most HEATMAP_MAX_SIDE on its longest side), half and half,
    on the region the model saw; the rest of the photo is shown as it is."""
    size = overlay_size(image.size)
    base = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    left, top = round(region[0] * size[0]), round(region[1] * size[1])
    right, bottom = round(region[2] * size[0]), round(region[3] * size[1])
    box = (left, top, max(left + 1, right), max(top + 1, bottom))
    heat = Image.fromarray((cam.numpy() * 255).astype(np.uint8)).resize(
        (box[2] - box[0], box[3] - box[1]), Image.Resampling.BILINEAR
    )
    seen = Image.blend(base.crop(box), Image.fromarray(_jet(np.asarray(heat) / 255.0)), 0.5)
    base.paste(seen, box[:2])
    return base


def _jet(values: np.ndarray) -> np.ndarray:
    """Blue (0) through cyan, yellow to red (1): the usual heatmap colours, without matplotlib."""
    channels = [np.clip(1.5 - np.abs(4 * values - centre), 0, 1) for centre in (3, 2, 1)]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)
