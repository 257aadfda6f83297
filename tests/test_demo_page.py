"""The pod's demo page in a real headless browser (Debian's chromium + chromedriver, selenium):
load it, upload a real photo, run, and see the result, with the same API and key as everyone."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pytest
import requests
from PIL import Image

from conftest import encode, photo, running_server
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

KEY = "demo-key"
CHROMEDRIVER = shutil.which("chromedriver")
# .ci/run installs chromium; on CI a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None and os.environ.get("CI") != "true",
    reason="chromium-driver not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _server(model_dir, arch: str):
    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir(arch)), WARMUP=False, POD_API_KEY=KEY)
    )
    return running_server(worker)


def _run_page(browser, url: str, tmp_path, fill, picture: bytes | None = None) -> str:
    """The page's run with an uploaded cat, until it says done; the results' text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    _run_page_until(browser, url, tmp_path, fill, picture)
    WebDriverWait(browser, 60).until(ready.text_to_be_present_in_element((By.ID, "status"), "done"))
    return browser.find_element(By.ID, "results").text


def test_the_page_classifies_an_uploaded_photo_with_score_bars(browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    from vision_worker.dev.tiny_models import LABELS

    def top_2(b):
        b.find_element(By.ID, "opt-top_k").send_keys("2")

    with _server(model_dir, "resnet") as (url, _):
        results = _run_page(browser, url, tmp_path, top_2)
        bars = browser.find_elements(By.CSS_SELECTOR, ".result .bar")
        browser.save_screenshot(str(tmp_path / "demo.png"))
    assert "cat.jpg" in results
    assert len(bars) == 2  # top_k from the form reached the job
    assert all(any(label in bar.text for label in LABELS) for bar in bars)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_the_page_builds_its_form_from_the_served_tasks_options(browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    def labels(b):
        b.find_element(By.ID, "opt-labels").send_keys("a cat\na rocket\na cup of coffee")

    with _server(model_dir, "clip") as (url, _):
        results = _run_page(browser, url, tmp_path, labels)
        template = browser.find_element(By.ID, "opt-hypothesis_template")
        assert template.get_attribute("placeholder") == "This is a photo of {}."
    assert all(label in results for label in ("a cat", "a rocket", "a cup of coffee"))


def test_the_page_is_open_but_the_api_behind_it_needs_the_key(model_dir):
    with _server(model_dir, "resnet") as (url, _):
        page = requests.get(url + "/", timeout=10)
        assert page.status_code == 200
        assert "<title>vision-worker</title>" in page.text
        # Nothing loaded from outside the pod: no external scripts, styles or fonts.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
        assert "@import" not in page.text
        assert requests.post(url + "/runsync", json={"input": {}}, timeout=10).status_code == 401


def test_api_docs_render_offline_from_local_files(browser, model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with _server(model_dir, "resnet") as (url, _):
        page = requests.get(url + "/docs", timeout=10)
        assert page.status_code == 200
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
        assert requests.get(url + "/static/swagger/swagger-ui-bundle.js", timeout=10).ok
        browser.get(url + "/docs")
        WebDriverWait(browser, 20).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        )
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/runsync", "/run", "/predict"} <= {p.replace("\u200b", "") for p in paths}


def test_the_page_draws_detection_boxes_on_the_photo(browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def threshold(b):
        b.find_element(By.ID, "opt-threshold").send_keys("0.1")
        b.find_element(By.ID, "opt-max_detections").send_keys("3")

    with _server(model_dir, "yolos") as (url, _):
        _run_page(browser, url, tmp_path, threshold)
        WebDriverWait(browser, 10).until(
            lambda b: b.find_elements(By.CSS_SELECTOR, ".frame .shape")
        )
        boxes = browser.find_elements(By.CSS_SELECTOR, ".frame svg.shapes .shape rect")
        listed = browser.find_elements(By.CSS_SELECTOR, ".result .detection")
    assert len(listed) == 3  # max_detections from the form
    assert len(boxes) == 3


def test_the_page_shows_heatmaps_and_answers(browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By

    def explain(b):
        b.find_element(By.ID, "opt-explain").click()

    with _server(model_dir, "resnet") as (url, _):
        results = _run_page(browser, url, tmp_path, explain)
        heatmap = browser.find_element(By.CSS_SELECTOR, ".frame img.heatmap")
        assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", heatmap) > 0
    assert 'heatmap: the regions behind "' in results

    def question(b):
        b.find_element(By.ID, "opt-question").send_keys("what is in the photo?")

    with _server(model_dir, "llava") as (url, _):
        _run_page(browser, url, tmp_path, question)
        answer = browser.find_element(By.CSS_SELECTOR, ".result .answer")
    assert answer.text.strip()


def test_the_page_draws_segment_masks_and_depth_maps(browser, model_dir, tmp_path):
    """Segments: one row per segment and their RLE masks decoded in the page onto a canvas the
    photo's size (the same masks pycocotools decodes); depth: the 16-bit PNG as the preview."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def nothing(b):
        pass

    with _server(model_dir, "segformer") as (url, _):
        _run_page(browser, url, tmp_path, nothing)
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".overlay"))
        canvas = browser.find_element(By.CSS_SELECTOR, ".frame canvas.overlay")
        size = browser.execute_script("return [arguments[0].width, arguments[0].height]", canvas)
        painted = browser.execute_script(
            "const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n",
            canvas,
        )
        rows = browser.find_elements(By.CSS_SELECTOR, ".result .detection")
    assert size == [451, 300]  # chelsea, in the photo's pixels
    assert painted == 451 * 300  # semantic segments cover every pixel once
    assert rows

    with _server(model_dir, "depth-anything") as (url, _):
        results = _run_page(browser, url, tmp_path, nothing)
        preview = browser.find_element(By.CSS_SELECTOR, ".frame img")
        assert preview.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", preview) == 451
    assert "depth 451x300" in results


def test_the_page_marks_required_options_and_shows_errors_as_errors(browser, model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    with _server(model_dir, "owlvit") as (url, _):
        browser.get(url + "/")
        WebDriverWait(browser, 20).until(lambda b: "task" in b.find_element(By.ID, "model").text)
        label = browser.find_element(By.CSS_SELECTOR, "label[for='opt-labels']")
        assert label.text == "labels *"
        assert browser.find_element(By.ID, "opt-labels").get_attribute("aria-required") == "true"

    def too_many(b):
        b.find_element(By.ID, "opt-top_k").send_keys("99999")

    with _server(model_dir, "resnet") as (url, _):
        _run_page_until(browser, url, tmp_path, too_many)
        WebDriverWait(browser, 20).until(
            ready.presence_of_element_located((By.CSS_SELECTOR, "#results .error[role='alert']"))
        )
        error = browser.find_element(By.CSS_SELECTOR, "#results .error")
        colour = browser.execute_script("return getComputedStyle(arguments[0]).color", error)
    assert '"top_k" must be between 1 and' in error.text
    assert colour == "rgb(179, 38, 30)"  # the page's error red, not the grey of muted text


def _run_page_until(browser, url: str, tmp_path, fill, data: bytes | None = None) -> None:
    """Upload a cat (or `data`, as cat.jpg), fill the form, press run; not waiting for the
    outcome."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picture = tmp_path / "cat.jpg"
    if data is None:
        data = encode(photo("chelsea", size=None).convert("RGB"), "JPEG", quality=90)
    picture.write_bytes(data)
    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda b: "task" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys(str(picture))
    WebDriverWait(browser, 10).until(lambda b: "cat.jpg" in b.find_element(By.ID, "chosen").text)
    key = browser.find_element(By.ID, "key")
    key.clear()  # the page remembers the key of an earlier run on this origin
    key.send_keys(KEY)
    fill(browser)
    browser.find_element(By.ID, "run").click()


# --- Florence-2's shapes, OCR text -----------------------------------------------------------


def _pick(browser, option: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, f"opt-{option}")).select_by_value(value)


def _shown_photo(browser) -> tuple[float, float, float]:
    """Where the preview shows the photo on screen: its left, top and scale, from the <img>'s
    box and the upright photo's size as the test knows it (object-fit: contain)."""
    from selenium.webdriver.common.by import By

    img = browser.find_element(By.CSS_SELECTOR, ".result .frame img")
    box = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", img)
    return box, img


def _screen_rects(browser, selector: str) -> list[dict]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map((e) => e.getBoundingClientRect().toJSON())",
        selector,
    )


def _fitted(box: dict, size: tuple[int, int]) -> tuple[float, float, float]:
    scale = min(box["width"] / size[0], box["height"] / size[1])
    left = box["left"] + (box["width"] - size[0] * scale) / 2
    top = box["top"] + (box["height"] - size[1] * scale) / 2
    return left, top, scale


def _assert_boxes_at(rects: list[dict], boxes: list, box: dict, size: tuple[int, int]) -> None:
    """Each drawn rectangle where its box in the photo's pixels lands on the shown photo."""
    left, top, scale = _fitted(box, size)
    assert len(rects) == len(boxes)
    for rect, corners in zip(rects, boxes, strict=True):
        # Clipped to the photo; a random model's box may come with its corners swapped.
        xs = sorted(min(max(v, 0), size[0]) for v in corners[0::2])
        ys = sorted(min(max(v, 0), size[1]) for v in corners[1::2])
        # The rectangle's own geometry (Chrome leaves the stroke out of an SVG element's box).
        assert rect["left"] == pytest.approx(left + xs[0] * scale, abs=0.1)
        assert rect["top"] == pytest.approx(top + ys[0] * scale, abs=0.1)
        assert rect["width"] == pytest.approx((xs[1] - xs[0]) * scale, abs=0.1)
        assert rect["height"] == pytest.approx((ys[1] - ys[0]) * scale, abs=0.1)


def _runsync(url: str, data: bytes, **options) -> dict:
    job = {"input": {"images": [base64.b64encode(data).decode()], **options}}
    response = requests.post(
        url + "/runsync", json=job, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    )
    response.raise_for_status()
    return response.json()["output"]["results"][0]


def _exif_turned(name: str) -> tuple[bytes, tuple[int, int]]:
    """A photo stored turned a quarter with EXIF orientation 6, as a portrait phone saves it;
    with its upright size (the worker's coordinates and the browser's preview are upright)."""
    upright = photo(name, size=None).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(stored, "JPEG", quality=90, exif=exif), upright.size


def test_the_page_draws_florence_boxes_at_the_photos_scaled_coordinates(
    browser, model_dir, tmp_path
):
    """<OD> on the tiny Florence-2: one rectangle per box the worker returns for the same job,
    each where the box lands on the preview. The random model's boxes are few and small, so a
    second run answers with known boxes, quad boxes and polygons in an EXIF-turned photo's
    pixels (the worker's own parse replaced): every shape at its scaled place, labels as text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    astronaut = encode(photo("astronaut", size=None).convert("RGB"), "JPEG", quality=90)

    def od(b):
        _pick(b, "task_prompt", "<OD>")

    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("florence2")), WARMUP=False, POD_API_KEY=KEY)
    )
    with running_server(worker) as (url, _):
        expected = _runsync(url, astronaut, task_prompt="<OD>")["parsed"]
        _run_page(browser, url, tmp_path, od, astronaut)
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "svg.shapes"))
        box, _ = _shown_photo(browser)
        rects = _screen_rects(browser, ".frame svg.shapes .shape.florence rect")
        regions = browser.find_elements(By.CSS_SELECTOR, ".result .region")
        assert expected["bboxes"], expected  # astronaut gets a box from the random weights
        _assert_boxes_at(rects, expected["bboxes"], box, (512, 512))
        assert len(regions) == len(expected["bboxes"])

        turned, size = _exif_turned("chelsea")
        assert size == (451, 300)
        boxes = [[45.1, 30.0, 225.5, 150.0], [300.0, 200.0, 520.0, 340.0]]  # the second clipped
        quads = [[10.0, 20.0, 200.0, 25.0, 198.0, 60.0, 12.0, 55.0]]
        polygons = [
            [[100.0, 100.0, 400.0, 120.0, 250.0, 290.0], [20.0, 250.0, 60.0, 280.0, 30.0, 295.0]]
        ]
        answers = {
            "<OD>": {"bboxes": boxes, "labels": ["cat", "<script>window.pwned = 1</script>"]},
            "<OCR_WITH_REGION>": {"quad_boxes": quads, "labels": ["<b>TOTAL</b> 42.00"]},
            "<REFERRING_EXPRESSION_SEGMENTATION>": {"polygons": polygons, "labels": [""]},
        }
        real, read_at = worker.task.encode, []

        def answered(output, meta, options):
            read_at.append(tuple(meta["size"]))
            return {**real(output, meta, options), "parsed": answers[options.task_prompt]}

        worker.task.encode = answered
        try:
            _run_page(browser, url, tmp_path, lambda b: _pick(b, "task_prompt", "<OD>"), turned)
            WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".shape"))
            box, img = _shown_photo(browser)
            natural = browser.execute_script(
                "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
            )
            assert natural == [451, 300]  # the browser shows it upright, as the worker reads it
            _assert_boxes_at(_screen_rects(browser, ".shape rect"), boxes, box, size)
            labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".shape text")]
            assert labels == ["cat", "<script>window.pwned = 1</script>"]
            assert browser.execute_script("return window.pwned") is None
            assert not browser.find_elements(By.CSS_SELECTOR, "#results script")

            def quad(b):
                _pick(b, "task_prompt", "<OCR_WITH_REGION>")

            _run_page(browser, url, tmp_path, quad, turned)
            WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".shape"))
            drawn = _polygons(browser)
            assert browser.find_element(By.CSS_SELECTOR, ".shape text").text == "<b>TOTAL</b> 42.00"
            assert not browser.find_elements(By.CSS_SELECTOR, "#results b")

            def segment(b):
                _pick(b, "task_prompt", "<REFERRING_EXPRESSION_SEGMENTATION>")
                b.find_element(By.ID, "opt-text").send_keys("the cat")

            _run_page(browser, url, tmp_path, segment, turned)
            WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".shape"))
            drawn += _polygons(browser)
        finally:
            worker.task.encode = real
    assert set(read_at) == {size}  # the worker reads the photo upright too
    # The SVG spans the shown photo; a polygon's points are its pixels times the scale.
    left, top, scale = _fitted(box, size)
    expected_points = [quads[0], *polygons[0]]
    assert len(drawn) == len(expected_points)
    for (origin, points), flat in zip(drawn, expected_points, strict=True):
        assert origin["left"] == pytest.approx(left, abs=0.6)
        assert origin["top"] == pytest.approx(top, abs=0.6)
        assert points == pytest.approx([v * scale for v in flat], abs=0.01)


def test_the_page_sends_a_florence_region_typed_as_json(browser, model_dir, tmp_path):
    """A region is an object option: the page offers its fields and sends the typed JSON as an
    object, which the worker takes as the job's region."""
    from selenium.webdriver.common.by import By

    region = {"xmin": 40.0, "ymin": 30.5, "xmax": 300.0, "ymax": 250.0}
    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("florence2")), WARMUP=False, POD_API_KEY=KEY)
    )
    real, regions = worker.task.check, []

    def check(options):
        regions.append(options.region)
        return real(options)

    def describe(b):
        _pick(b, "task_prompt", "<REGION_TO_DESCRIPTION>")
        field = b.find_element(By.ID, "opt-region")
        for name in ("xmin", "ymin", "xmax", "ymax"):
            assert f'"{name}"' in field.get_attribute("placeholder")
        field.send_keys(json.dumps(region))

    worker.task.check = check
    with running_server(worker) as (url, _):
        _run_page(browser, url, tmp_path, describe)
    assert [r.model_dump() for r in regions] == [region]
    assert "error" not in browser.find_element(By.ID, "results").text.lower()


def _polygons(browser) -> list[tuple[dict, list[float]]]:
    """Each drawn polygon: its SVG's place on screen and its points, in displayed pixels."""
    return browser.execute_script(
        "return [...document.querySelectorAll('.shape polygon')].map((p) => ["
        "p.ownerSVGElement.getBoundingClientRect().toJSON(),"
        "[...p.points].flatMap((q) => [q.x, q.y])])"
    )


def test_the_page_shows_ocr_text_as_text(browser, model_dir, tmp_path):
    """GOT-OCR2's text and Donut's sequence and fields (as JSON) as text blocks, equal to what
    the worker returned; markup in a model's text is shown as text, never run."""
    from selenium.webdriver.common.by import By

    cat = encode(photo("chelsea", size=None).convert("RGB"), "JPEG", quality=90)

    def nothing(b):
        pass

    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("got-ocr2")), WARMUP=False, POD_API_KEY=KEY)
    )
    with running_server(worker) as (url, _):
        expected = _runsync(url, cat)["text"]
        _run_page(browser, url, tmp_path, nothing, cat)
        # An option without a default is not sent: GOT's color starts unset, not at "red".
        assert browser.find_element(By.ID, "opt-color").get_attribute("value") == ""
        shown = browser.find_element(By.CSS_SELECTOR, ".result pre.ocr-text")
        assert browser.execute_script("return arguments[0].textContent", shown) == expected
        assert expected.strip()

        hostile = (
            '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
            "\n  line two & <b>bold</b>"
        )
        real = worker.task.encode
        worker.task.encode = lambda output, meta, options: {**output, "text": hostile}
        try:
            _run_page(browser, url, tmp_path, nothing, cat)
        finally:
            worker.task.encode = real
        shown = browser.find_element(By.CSS_SELECTOR, ".result pre.ocr-text")
        assert browser.execute_script("return arguments[0].textContent", shown) == hostile
        assert "line two & <b>bold</b>" in shown.text
        assert browser.execute_script("return window.pwned") is None
        assert not browser.find_elements(By.CSS_SELECTOR, "#results script, #results b")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#results img")) == 1  # the preview

    with _server(model_dir, "donut") as (url, _):
        expected = _runsync(url, cat)
        _run_page(browser, url, tmp_path, nothing, cat)
        sequence = browser.find_element(By.CSS_SELECTOR, ".result pre.ocr-sequence")
        fields = browser.find_element(By.CSS_SELECTOR, ".result pre.ocr-fields")
        sequence_text, fields_text = (
            browser.execute_script("return arguments[0].textContent", e) for e in (sequence, fields)
        )
    assert sequence_text == expected["sequence"]
    assert json.loads(fields_text) == expected["fields"]
    assert fields_text == json.dumps(expected["fields"], indent=2, ensure_ascii=False)


def test_the_page_draws_detections_on_any_tasks_result(browser, model_dir, tmp_path):
    """An answer with `detections` (PaliGemma's boxes, as ask gives them) gets its boxes drawn
    and listed as a detector's do, a score or none."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    boxes = [
        {"label": "cat", "score": 0.5, "box": {"xmin": 10, "ymin": 20, "xmax": 200, "ymax": 150}},
        {"label": "ear", "box": {"xmin": 300, "ymin": 5, "xmax": 451, "ymax": 300}},
    ]

    def question(b):
        b.find_element(By.ID, "opt-question").send_keys("detect cat")

    worker = Worker.start(
        load_settings(MODEL_NAME=str(model_dir("paligemma")), WARMUP=False, POD_API_KEY=KEY)
    )
    real = worker.task.encode
    worker.task.encode = lambda output, meta, options: {
        **real(output, meta, options),
        "detections": boxes,
    }
    with running_server(worker) as (url, _):
        _run_page(browser, url, tmp_path, question)
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".shape"))
        box, _ = _shown_photo(browser)
        rects = _screen_rects(browser, ".shape.detections rect")
        rows = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".result .detection")]
        assert browser.find_element(By.CSS_SELECTOR, ".result .answer")
    corners = [[b["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for b in boxes]
    _assert_boxes_at(rects, corners, box, (451, 300))
    assert rows == ["cat 0.500 at (10, 20) to (200, 150)", "ear at (300, 5) to (451, 300)"]
