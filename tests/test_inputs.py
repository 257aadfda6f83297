"""Every way a caller sends an image, and every pixel format, reaches the model the same way."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from conftest import encode, noise_image, photo, run_job
from vision_worker.images import ImageLimits, decode_base64_source, decode_image

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000)


@pytest.fixture(scope="module")
def worker(make_worker):
    return make_worker("resnet", ALLOW_PRIVATE_URLS=True)


def _labels(worker, image: str) -> list:
    result = run_job(worker, {"image": image, "top_k": 3})["results"][0]
    assert "labels" in result, result
    return result["labels"]


def test_raw_base64_data_uri_and_url_give_the_same_result(worker, httpserver):
    png = encode(photo("coffee"))
    httpserver.expect_request("/coffee.png").respond_with_data(png, content_type="image/png")
    raw = base64.b64encode(png).decode()
    expected = _labels(worker, raw)
    assert _labels(worker, f"data:image/png;base64,{raw}") == expected
    assert _labels(worker, httpserver.url_for("/coffee.png")) == expected


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(
            lambda s: "\n".join(s[i : i + 76] for i in range(0, len(s), 76)), id="mime-lines"
        ),
        pytest.param(lambda s: "  " + s + " \r\n", id="surrounding-space"),
        pytest.param(lambda s: s.rstrip("="), id="no-padding"),
        pytest.param(lambda s: s.replace("+", "-").replace("/", "_"), id="url-safe"),
        pytest.param(lambda s: "data:;base64," + s, id="data-uri-without-type"),
        pytest.param(lambda s: "DATA:image/png;charset=x;BASE64," + s, id="data-uri-params"),
    ],
)
def test_base64_as_users_send_it_in_practice(worker, mangle):
    raw = base64.b64encode(encode(noise_image(3, (37, 29)))).decode()
    assert "+" in raw or "/" in raw  # the url-safe case must really differ
    assert _labels(worker, mangle(raw)) == _labels(worker, raw)


def test_one_image_via_image_key_and_many_via_images_key(worker, photos_b64):
    single = run_job(worker, {"image": photos_b64[0]})
    many = run_job(worker, {"images": photos_b64})
    assert len(single["results"]) == 1
    assert (
        next(r["labels"][0]["label"] for r in many["results"])
        == single["results"][0]["labels"][0]["label"]
    )


def _rgb(image: Image.Image, fmt: str = "PNG", **save_args) -> np.ndarray:
    decoded = decode_image(encode(image, fmt, **save_args), LIMITS)
    assert decoded.mode == "RGB"
    return np.asarray(decoded)


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = Image.new("L", (8, 8), 100)
    assert (_rgb(gray) == 100).all()
    palette = Image.new("RGB", (8, 8), (200, 10, 10)).quantize(4)
    assert tuple(_rgb(palette)[0, 0]) == (200, 10, 10)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert next(iter(_rgb(cmyk, "JPEG", quality=100)[0, 0])) > 240


def test_transparency_is_composited_on_white_not_black():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (_rgb(clear) == 255).all()
    half = Image.new("LA", (8, 8), (0, 128))
    assert 120 < _rgb(half)[0, 0, 0] < 135


def test_sixteen_bit_images_are_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    pixels = _rgb(Image.fromarray(ramp))
    assert pixels[0, 0, 0] == 0
    assert pixels[-1, -1, 0] == 255
    assert 100 < pixels[4, 0, 0] < 160  # the middle of the ramp stays in the middle


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = np.asarray(decode_image(data, LIMITS))
    assert first[0, 0, 0] > 200
    assert first[0, 0, 2] < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    # A 4x2 image whose left half is black; after transposing, its shape and layout follow EXIF.
    base = Image.new("RGB", (40, 20), (255, 255, 255))
    base.paste((0, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(base, "JPEG", exif=exif, quality=95), LIMITS)
    expected = {1: (40, 20), 2: (40, 20), 3: (40, 20), 4: (40, 20)}.get(orientation, (20, 40))
    assert decoded.size == expected
    if orientation in (1, 4):
        assert decoded.getpixel((5, 10))[0] < 60  # black stays on the left
    if orientation in (2, 3):
        assert decoded.getpixel((5, 10))[0] > 200  # mirrored: black moved to the right


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_supported_formats_decode(fmt):
    assert decode_image(encode(photo("rocket", (40, 30)), fmt), LIMITS).size == (40, 30)


def test_decode_base64_source_tolerates_missing_padding_for_each_length():
    for length in range(1, 7):
        data = bytes(range(length))
        text = base64.b64encode(data).decode().rstrip("=")
        assert decode_base64_source(text, 1000) == data
