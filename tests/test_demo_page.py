"""The pod's demo page in a real headless browser (Debian's chromium + chromedriver, selenium):
load it, upload a real photo, run, and see the result, with the same API and key as everyone."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import requests

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


def _run_page(browser, url: str, tmp_path, fill) -> str:
    """The page's run with an uploaded cat, until it says done; the results' text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    _run_page_until(browser, url, tmp_path, fill)
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
        WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".frame .box"))
        boxes = browser.find_elements(By.CSS_SELECTOR, ".frame .box")
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


def _run_page_until(browser, url: str, tmp_path, fill) -> None:
    """Upload a cat, fill the form, press run; not waiting for the outcome."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picture = tmp_path / "cat.jpg"
    picture.write_bytes(encode(photo("chelsea", size=None).convert("RGB"), "JPEG", quality=90))
    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda b: "task" in b.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys(str(picture))
    WebDriverWait(browser, 10).until(lambda b: "cat.jpg" in b.find_element(By.ID, "chosen").text)
    browser.find_element(By.ID, "key").send_keys(KEY)
    fill(browser)
    browser.find_element(By.ID, "run").click()
