"""Image strings (raw base64, data URI, http(s) URL) to RGB PIL images, within byte/pixel limits."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import ImageError
from .fetch import UrlFetcher
from .memory import DecodeBudget, decoded_cost

T = TypeVar("T")
# A task's prepare of one decoded image, e.g. lambda image: task.prepare(image, options).
Prepare = Callable[[Image.Image], T]

# Formats decoded by Pillow's own code. Others Pillow can open are left out on purpose: EPS calls
# Ghostscript, and rarely used scientific formats are attack surface with no caption use. ICO is
# out too: its directory may declare 256x256 while wrapping a 9000x9000 PNG, which Pillow decodes
# before the size it reports can be checked.
_WANTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "PPM", "TGA")
Image.init()
# AVIF needs Pillow >= 11.2 built with libavif; list only what this Pillow really opens.
SUPPORTED_FORMATS = tuple(name for name in _WANTED_FORMATS if name in Image.OPEN)

_DATA_URI = re.compile(r"^data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*?),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_BASE64_ALPHABET = re.compile(r"^[A-Za-z0-9+/\-_]*={0,2}$")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    # Longest side over shortest at most: a 1x6000 strip is 6,000 pixels, but a processor's
    # shortest-edge resize makes it 224 x 1,344,000 (1.2 GB) before any crop.
    max_aspect_ratio: float = 32.0


# Scans one JPEG may have. Each scan of a progressive JPEG decodes over the whole image again:
# encoders write about 10; one 82-byte scan repeated 2,000 times took 10.7 s to decode.
MAX_JPEG_SCANS = 100
# A TIFF tile libtiff allocates whole, whatever the image's declared size (a 167-byte TIFF of
# 16x16 pixels declaring a 16384x43680 tile allocated 683 MB): tiles may not exceed the image's
# own pixels, or a megapixel for small images (256x256 and 512x512 tiles are usual).
_TIFF_TILE_SLACK_PIXELS = 1 << 20


def is_url(source: str | bytes) -> bool:
    if isinstance(source, bytes):  # an uploaded file's bytes
        return False
    head = source[:16].lower()
    return "://" in head and not head.startswith("data:")


def decode_base64_source(source: str, max_bytes: int) -> bytes:
    """Raw base64 or a base64 data URI to bytes; tolerates newlines, missing padding, URL-safe."""
    payload = source
    match = _DATA_URI.match(source[:256])
    if match:
        media = match["media"].strip().lower()
        if media and not media.startswith("image/"):
            raise ImageError("invalid_image", f"data URI media type {media!r} is not an image")
        if ";base64" not in match["params"].lower():
            raise ImageError("invalid_image", "only base64 data URIs are supported (';base64,')")
        payload = source[match.end() :]
    elif source[:5].lower() == "data:":
        raise ImageError(
            "invalid_image", "malformed data URI: expected 'data:<type>;base64,<data>'"
        )
    # 4 base64 characters carry 3 bytes; refuse before allocating the decoded copy.
    if len(payload) > (max_bytes * 4 // 3 + 4) * 2:
        raise ImageError("too_large", f"base64 payload is over the {max_bytes}-byte limit")
    compact = _WHITESPACE.sub("", payload)
    if len(compact) * 3 // 4 > max_bytes + 2:
        raise ImageError("too_large", f"image is over the {max_bytes}-byte limit")
    if not compact:
        raise ImageError("invalid_image", "empty image string")
    if not _BASE64_ALPHABET.match(compact):
        raise ImageError("invalid_image", "not valid base64 (and not an http(s) URL or data URI)")
    compact = compact.rstrip("=")
    if len(compact) % 4 == 1:
        raise ImageError("invalid_image", "not valid base64: impossible length")
    try:
        data = base64.urlsafe_b64decode(
            compact.replace("+", "-").replace("/", "_") + "=" * (-len(compact) % 4)
        )
    except (binascii.Error, ValueError) as error:
        raise ImageError("invalid_image", f"not valid base64: {error}") from None
    return data  # its exact size is checked once, in decode_image, for every source


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Encoded bytes to an upright RGB image; the pixel limit is checked from the header first."""
    return finish_decode(open_image(data, limits))


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Read and check the header only: size and pixel limits hold before any pixel is decoded."""
    if not data:
        raise ImageError("invalid_image", "image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(
            "too_large", f"image is {len(data)} bytes, over the {limits.max_bytes}-byte limit"
        )
    with _pillow_errors_as_image_errors(data):
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError(
                "too_large",
                f"{width}x{height} = {width * height} pixels, limit {limits.max_pixels}",
            )
        _check_shape_and_decoder_cost(image, data, limits)
        # Recorded before a scaled (draft) decode can shrink image.size: boxes, masks and
        # overlays are in this photo's pixels, whatever size the decoder produced.
        image.info[_STORED_SIZE] = image.size
        return image


def _check_shape_and_decoder_cost(image: Image.Image, data: bytes, limits: ImageLimits) -> None:
    """What the header says decoding and resizing will cost, refused before it is paid."""
    width, height = image.size
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > limits.max_aspect_ratio:
        raise ImageError(
            "too_large",
            f"{width}x{height} is {ratio:.0f}:1, over MAX_ASPECT_RATIO={limits.max_aspect_ratio:g} "
            "(resizing its short side to the model's size would make it enormous)",
        )
    if image.format in {"JPEG", "MPO"} and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        # In entropy-coded data 0xFF is always followed by 0x00: these are scan markers.
        raise ImageError(
            "too_large", f"JPEG with {scans} scans, at most {MAX_JPEG_SCANS} (each decodes again)"
        )
    if image.format == "TIFF":
        tile_width, tile_height = (image.tag_v2.get(tag) for tag in (322, 323))
        if tile_width and tile_height:
            tile = int(tile_width) * int(tile_height)
            if tile > max(width * height, _TIFF_TILE_SLACK_PIXELS):
                raise ImageError(
                    "too_large",
                    f"TIFF tiles of {tile_width}x{tile_height} for a {width}x{height} image "
                    f"(decoding allocates a whole tile: {tile} pixels)",
                )


# Pixels decoded per pixel the model sees, per side, by JPEG_DRAFT mode. A scaled decode is a box
# filter (libjpeg averages in the DCT domain) followed by the processor's own resize, which is not
# the pipeline's one resize from the full photo. Measured with real ImageNet weights
# (EfficientNet-Lite0, bench/decode_accuracy.py), the largest top-5 probability difference from
# the pipeline is about 0.06 / margin: 0.055 at 1.5x, 0.025 at 3x, 0.010 at 6x, <= 0.005 from 8x.
# "true" keeps within the 0.01 budget with room; "fast" decodes as little as the model's input.
DRAFT_MARGINS = {"true": 8.0, "fast": 1.0}


def draft_size(
    width: int, height: int, target: dict | None, margin: float = DRAFT_MARGINS["true"]
) -> tuple[int, int] | None:
    """The smallest (width, height) worth decoding for a processor's target `size`, or None.

    `target` is an image processor's `size`: {"shortest_edge": S}, {"height": H, "width": W}
    or {"longest_edge": L}; `margin` is how many decoded pixels per model pixel to keep per
    side. None when the image is not larger than that.
    """
    if not target:
        return None
    if "shortest_edge" in target:
        scale = target["shortest_edge"] * margin / min(width, height)
    elif "height" in target and "width" in target:
        scale = max(target["height"] / height, target["width"] / width) * margin
    elif "longest_edge" in target:
        scale = target["longest_edge"] * margin / max(width, height)
    else:
        return None
    if scale >= 1:
        return None
    return math.ceil(width * scale), math.ceil(height * scale)


def draft_for(image: Image.Image, target: dict | None, mode: str = "true") -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (in the DCT domain, before any pixel
    exists) when the model needs no more (JPEG_DRAFT `mode`: "true", "fast" or "false"); other
    formats decode in full. Must precede load()."""
    # Pillow opens a JPEG that carries a second image (MPF: some phones' gain maps) as MPO.
    if image.format not in {"JPEG", "MPO"} or mode not in DRAFT_MARGINS:
        return
    size = draft_size(*image.size, target, DRAFT_MARGINS[mode])
    if size is not None:
        image.draft("RGB" if image.mode == "RGB" else image.mode, size)


def finish_decode(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image from `open_image` into an upright RGB image; its
    `photo_size` stays the photo's own, also when a draft decoded fewer pixels."""
    stored = image.info.get(_STORED_SIZE, image.size)  # read before load() can change info
    with _pillow_errors_as_image_errors(b""):
        image.seek(0)  # animations: the first frame only, without touching the others
        image.load()
        # The orientation exif_transpose reads, read after load(): some formats (PNG's eXIf
        # after the pixels) reveal it only then. Not told from the sizes: a draft of a nearly
        # square photo can come out square.
        turned = image.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS
        upright = to_rgb(ImageOps.exif_transpose(image))
    # Set on the result itself: some conversions (alpha compositing) start a fresh info dict.
    upright.info[PHOTO_SIZE] = stored[::-1] if turned else stored
    return upright


# The key, in a decoded image's `info`, of the photo's (width, height) after EXIF rotation.
PHOTO_SIZE = "vision_worker.photo_size"
# The size the file declares, kept from the header before a draft can shrink image.size.
_STORED_SIZE = "vision_worker.stored_size"
# EXIF orientations 5-8 turn the picture a quarter: the upright width is the stored height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def photo_size(image: Image.Image) -> tuple[int, int]:
    """The (width, height) of the photo an image was decoded from, upright (after EXIF
    rotation). A scaled JPEG decode is smaller than this; an image made in memory is its own
    photo. Geometry in results (boxes, masks, overlays) is in these pixels."""
    size = image.info.get(PHOTO_SIZE)
    return size if size is not None else image.size


@contextmanager
def _pillow_errors_as_image_errors(data: bytes) -> Iterator[None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError("too_large", f"decompression bomb refused: {error}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("invalid_image", _unidentified_reason(data)) from None
    except Exception as error:  # Pillow raises many types for corrupt files; all mean the same
        raise ImageError("invalid_image", f"not a decodable image ({error})"[:300]) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: high bit depths scaled, transparency composited on white."""
    if image.mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        image = _high_bit_depth_to_l(image)
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) gray to 8-bit, in place on one integer copy: no float64 arrays, which
    cost 8 bytes a pixel (a 40 MP 16-bit PNG went through ~1 GiB of them)."""
    pixels = np.array(image, dtype=np.int32)  # 4 bytes a pixel; 255 * 65535 fits
    np.clip(pixels, 0, 65535, out=pixels)
    # Scale by the container's range, not the image's max, so a dark 16-bit image stays dark;
    # values that fit in 8 bits are taken as 8-bit data.
    if pixels.max(initial=0) > 255:
        pixels *= 255
        pixels //= 65535
    return Image.fromarray(pixels.astype(np.uint8), "L")


def _unidentified_reason(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG is not supported; send a raster image (PNG, JPEG, WebP, ...)"
    if head.startswith((b"<!doctype html", b"<html")):
        return "got an HTML page, not an image"
    if head[:4] == b"\x00\x00\x00\x1c" or b"ftypheic" in data[:32] or b"ftypheix" in data[:32]:
        return "HEIC is not supported; send PNG, JPEG, WebP or AVIF"
    return f"not a decodable image (supported: {', '.join(SUPPORTED_FORMATS)})"


class ImageStage:
    """An image's way from a job to model inputs, the one path serving and the benchmarks run:
    its bytes (downloaded with the safe fetcher, decoded from base64, or as uploaded), the
    header checks, a scaled JPEG decode down to what the model needs, then the task's `prepare`,
    all within the process-wide decoded-memory budget. Blocking: callers run it on a thread."""

    def __init__(
        self, limits: ImageLimits, fetcher: UrlFetcher, budget: DecodeBudget, jpeg_draft: str
    ) -> None:
        self.limits, self.fetcher, self.budget = limits, fetcher, budget
        self.jpeg_draft = jpeg_draft

    def encoded(self, source: str | bytes) -> bytes:
        """The encoded image: downloaded, decoded from base64 / a data URI, or as uploaded."""
        if isinstance(source, bytes):
            return source
        if is_url(source):
            return self.fetcher.fetch(source.strip())
        return decode_base64_source(source, self.limits.max_bytes)

    def model_input(self, data: bytes, prepare: Prepare[T], target: dict | None) -> T:
        """`prepare` of the decoded, upright RGB image; `target` is the size the decode must keep
        (Task.decode_target). Raises ImageError for this image alone."""
        opened = open_image(data, self.limits)
        draft_for(opened, target, self.jpeg_draft)
        with self.budget.reserve(decoded_cost(*opened.size, opened.mode)):
            image = finish_decode(opened)
            try:
                return prepare(image)
            except ImageError:  # the task's own verdict on this image
                raise
            except Exception as error:  # e.g. a 1x1 image the processor cannot resize
                message = f"cannot preprocess image: {error}"[:300]
                raise ImageError("invalid_image", message) from None
            finally:
                del image, opened  # released before the reservation is, not at the next GC

    def model_input_together(
        self, datas: Sequence[bytes], prepare: Callable[[list[Image.Image]], T], target: dict | None
    ) -> T:
        """`prepare` of all the images at once (one answer about several): every header is
        checked first, then the decode budget is reserved for all of them in one go (holding
        some while waiting for the rest could deadlock two such jobs). A failing image fails
        the whole item, naming its index."""
        opened = [self._opened(data, target, index) for index, data in enumerate(datas)]
        cost = sum(decoded_cost(*image.size, image.mode) for image in opened)
        with self.budget.reserve(cost):
            images: list[Image.Image] = []
            try:
                for index, image in enumerate(opened):
                    images.append(_numbered(finish_decode, image, index))
                return prepare(images)
            except ImageError:
                raise
            except Exception as error:  # e.g. a processor that takes one image per prompt
                message = f"cannot preprocess these images together: {error}"[:300]
                raise ImageError("invalid_image", message) from None
            finally:
                del images, opened  # released before the reservation is

    def _opened(self, data: bytes, target: dict | None, index: int) -> Image.Image:
        opened = _numbered(lambda d: open_image(d, self.limits), data, index)
        draft_for(opened, target, self.jpeg_draft)
        return opened

    def prepared(self, source: str | bytes, prepare: Prepare[T], target: dict | None) -> T:
        """Both steps at once (benchmarks, warm-up): what a job's image goes through."""
        return self.model_input(self.encoded(source), prepare, target)


def _numbered(step: Callable[[Any], T], value: Any, index: int) -> T:
    """`step(value)`, its ImageError naming the job's image `index`."""
    try:
        return step(value)
    except ImageError as error:
        error.image = index
        raise
