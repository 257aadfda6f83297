"""PaliGemma's location tokens as boxes in the photo's pixels.

PaliGemma answers a detection prefix ("detect cat ; dog") in text: per object four location
tokens and its label, objects joined by " ; ", e.g.
"<loc0295><loc0142><loc0710><loc0880> cat ; <loc0100><loc0200><loc0300><loc0400> dog". As
big_vision and the PaliGemma model card define them, the four tokens are y_min, x_min, y_max,
x_max, each a bin of 1/1024 of the model's square input, and the label is the text after them up
to the next ";" (or the next token). The processor stretches the image to that square without
keeping its aspect, so x scales by the photo's width and y by its height, separately; the photo
is the original one, upright (after EXIF rotation), not the image as decoded (a JPEG may be
decoded at a reduced scale), so boxes land in the pixels the user sent.

Groups are read as big_vision's `extract_objs` reads them: four location tokens in a row make a
box (whitespace between them allowed: some tokenizers decode added tokens with spaces); fewer
than four (a cut answer) make none; a group's label may be empty (the next thing after it is
another group). Boxes are kept as the model gave them, corners not reordered.

Segmentation: after a group, "segment ..." answers hold 16 `<segNNN>` tokens, codes of
PaliGemma's VQ-VAE mask decoder. transformers does not ship that decoder (big_vision does, as a
separate checkpoint), so no mask is made here: the `<seg>` tokens stay in the answer's text and
the group's box is returned like any other.
"""

from __future__ import annotations

import re

from .base import pixel_box

# Four location tokens (y_min, x_min, y_max, x_max), any segmentation tokens after them, then the
# label: the text up to the next ";" or token.
_GROUP = re.compile(
    r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>"
    r"(?:\s*<seg\d{3}>)*"
    r"([^;<>]*)"
)
_ANY_LOCATION = re.compile(r"<loc\d{4}>")
# Bins of the model's square input: 1,024 location tokens, <loc0000> to <loc1023>.
BINS = 1024


def paligemma_detections(answer: str, photo_size: tuple[int, int]) -> list[dict] | None:
    """The boxes an answer gives, each {"label", "box": {xmin, ymin, xmax, ymax}} in the pixels
    of a photo of `photo_size` (width, height), as the detect task gives boxes; None when the
    answer holds no location token at all (a plain answer), [] when it holds only partial ones."""
    if not _ANY_LOCATION.search(answer):
        return None
    width, height = photo_size
    found = []
    for match in _GROUP.finditer(answer):
        bins = [int(value) for value in match.groups()[:4]]
        if max(bins) >= BINS:  # not a PaliGemma token: text that only looks like one
            continue
        y_min, x_min, y_max, x_max = bins
        corners = (
            x_min / BINS * width,
            y_min / BINS * height,
            x_max / BINS * width,
            y_max / BINS * height,
        )
        found.append({"label": match[5].strip(), "box": pixel_box(corners)})
    return found
