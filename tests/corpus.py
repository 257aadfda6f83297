"""A corpus of hostile images and image strings, built in code so every byte is reviewable.

Each entry: (name, the string a caller sends, the error code expected or None for success).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

from conftest import encode, noise_image, photo


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_declaring(width: int, height: int) -> bytes:
    """A valid little PNG whose header claims width x height (a decompression bomb's shape)."""
    raw = zlib.compress(b"\x00\x00" * 8)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """Really compressible pixels: 30,000 x 30,000 one-bit image in a few hundred kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def many_frames_gif(frames: int = 3000) -> bytes:
    images = [Image.new("P", (4, 4), i % 256) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def polyglot() -> bytes:
    """A GIF header followed by script: some sniffers call it an image, decoders do not."""
    return b"GIF89a/*\x00\x00*/=1;alert(document.domain);" + b"\x00" * 64


def fake_heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100


JPEG = encode(photo("chelsea", (64, 48)), "JPEG")
PNG = encode(noise_image(11), "PNG")
GOOD = _b64(PNG)

IMAGES: list[tuple[str, str, str | None]] = [
    ("truncated-jpeg", _b64(JPEG[: len(JPEG) // 3]), "invalid_image"),
    ("truncated-png", _b64(PNG[: len(PNG) // 2]), "invalid_image"),
    ("jpeg-header-only", _b64(JPEG[:20]), "invalid_image"),
    ("zero-bytes", "", "invalid_image"),
    ("zero-bytes-data-uri", "data:image/png;base64,", "invalid_image"),
    ("text", _b64(b"just some text, not an image at all"), "invalid_image"),
    ("html", _b64(b"<!DOCTYPE html><html><body>Not found</body></html>"), "invalid_image"),
    (
        "svg",
        _b64(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'),
        "invalid_image",
    ),
    ("polyglot", _b64(polyglot()), "invalid_image"),
    ("heic", _b64(fake_heic()), "invalid_image"),
    (
        "eps-not-enabled",
        _b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"),
        "invalid_image",
    ),
    ("declared-65535-squared", _b64(png_declaring(65535, 65535)), "too_large"),
    ("declared-1x4-billion", _b64(png_declaring(1, 4_000_000_000)), "too_large"),
    ("bomb-30000-squared", _b64(bomb_png()), "too_large"),
    ("gif-3000-frames", _b64(many_frames_gif()), None),
    ("webp", _b64(encode(photo("coffee", (40, 30)), "WEBP")), None),
    ("avif", _b64(encode(photo("coffee", (40, 30)), "AVIF")), None),
    ("tiff-16bit", _b64(encode(Image.new("I;16", (8, 8), 40000), "TIFF")), None),
    ("base64-invalid-chars", "iVBORw0KGgo$$$%%%", "invalid_image"),
    ("base64-impossible-length", "A", "invalid_image"),
    ("base64-wrong-padding", GOOD.rstrip("=") + "===", "invalid_image"),
    ("base64-padding-in-middle", GOOD[:8] + "==" + GOOD[8:], "invalid_image"),
    ("base64-url-safe", GOOD.replace("+", "-").replace("/", "_"), None),
    ("base64-no-padding", GOOD.rstrip("="), None),
    ("base64-wrapped-lines", "\n".join(GOOD[i : i + 60] for i in range(0, len(GOOD), 60)), None),
    ("data-uri-no-media-type", "data:;base64," + GOOD, None),
    ("data-uri-wrong-media-type", "data:application/pdf;base64," + GOOD, "invalid_image"),
    ("data-uri-not-base64", "data:image/png," + GOOD, "invalid_image"),
    ("data-uri-no-comma", "data:image/png;base64" + GOOD, "invalid_image"),
    ("base64-over-limit", "A" * 3_000_000, "too_large"),
    ("base64-far-over-limit", "QUFB" * 10_000_000, "too_large"),
    ("url-file-scheme", "file:///etc/passwd", "forbidden_url"),
    ("url-ftp", "ftp://example.com/a.png", "forbidden_url"),
    ("url-gopher", "gopher://127.0.0.1:6379/_INFO", "forbidden_url"),
    ("url-metadata", "http://169.254.169.254/latest/meta-data/iam/", "forbidden_url"),
    ("url-userinfo", "http://example.com@10.0.0.1/a.png", "forbidden_url"),
]
