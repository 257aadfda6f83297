"""A newcomer's first hour: help that answers at once and lists every mode, local results that
name their file, hints that point the right way, and a mistyped MODEL_NAME said as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import b64, encode, photo, run_job
from test_handler import _handler

ROOT = Path(__file__).resolve().parents[1]


def test_help_answers_before_anything_heavy_loads_and_lists_every_mode():
    probe = (
        "import runpy, sys; sys.argv = ['handler.py', '--help']\n"
        "try:\n    runpy.run_path('handler.py', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        "print('EXIT', code, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "MODEL_NAME": "/no/such/model"},  # offline, unloadable: help anyway
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip().endswith("EXIT 0 False False"), done.stdout[-500:] + done.stderr
    for flag in ("--image", "--test_input", "-o KEY=VALUE", "--serve", "--host", "--port"):
        assert flag in done.stdout


def test_pod_flags_without_serve_are_refused_in_one_line(model_dir):
    done = _handler(model_dir("resnet"), "--port", "9000")
    assert done.returncode != 0
    assert "--host and --port are for pod mode: add --serve" in done.stderr


def test_local_results_name_their_file(model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "b_cat.png").write_bytes(encode(photo("chelsea")))
    (folder / "a_broken.png").write_bytes(b"not an image")
    done = _handler(model_dir("resnet"), "--image", str(folder), WARMUP="false")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)["results"]
    assert [Path(r["source"]).name for r in results] == ["a_broken.png", "b_cat.png"]
    assert results[0]["error"]["code"] == "invalid_image"
    assert "labels" in results[1]


def test_an_option_hint_names_every_task_it_belongs_to(make_worker):
    output = run_job(make_worker("vit-gpt2"), {"image": b64(photo("chelsea")), "top_k": 3})
    assert 'does not apply to task "caption" (it is for classify and zero_shot)' in output["error"]


def test_too_many_images_names_the_setting_and_the_way_around(make_worker):
    worker = make_worker("resnet", MAX_IMAGES_PER_JOB=2)
    output = run_job(worker, {"images": [b64(photo("chelsea"))] * 3})
    assert "at most 2 per job (MAX_IMAGES_PER_JOB; vision-worker-client splits" in output["error"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("models/tinyy", "MODEL_NAME=models/tinyy: no such directory"),
        ("./tiny", "MODEL_NAME=./tiny: no such directory"),
        ("EMPTY", "has no config.json: MODEL_NAME must be a directory save_pretrained wrote"),
    ],
)
def test_a_mistyped_model_name_is_said_as_such(tmp_path, monkeypatch, name, message):
    from vision_worker.settings import load_settings
    from vision_worker.tasks import ModelLoadError, load_task

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "EMPTY").mkdir()
    with pytest.raises(ModelLoadError) as caught:
        load_task(load_settings(MODEL_NAME=name))
    assert message in str(caught.value)


def test_fetch_errors_keep_the_urls_port():
    from vision_worker.errors import ImageError
    from vision_worker.fetch import UrlFetcher

    fetcher = UrlFetcher(timeout_s=2, max_bytes=1000, allow_private=True, retries=0)
    with pytest.raises(ImageError, match=r"http://127\.0\.0\.1:9/missing\.png"):
        fetcher.fetch("http://127.0.0.1:9/missing.png")


def _readme_block(after: str = "Your own images, and other models:") -> list[str]:
    """The commands of the README's first bash block after the text `after`, one per command
    (continued lines joined), comments cut."""
    text = (ROOT / "README.md").read_text()
    block = text.split(after, 1)[1].split("```bash", 1)[1]
    joined = block.split("```", 1)[0].strip().replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines()]


def test_the_readmes_examples_run_as_written():
    """Every command of the block but the server, in order, from the repository root, as a
    newcomer pastes them: each exits 0, and each job's results carry no error."""
    commands = [c for c in _readme_block() if "--serve" not in c]
    assert len(commands) == 5
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        if "handler.py" in command:
            results = json.loads(done.stdout)["results"]
            assert results
            assert all("error" not in r for r in results), (command, results)
            assert all(r["source"].startswith("examples/") for r in results)


def _pod(model_dir, port: int, grace_s: int = 60, arch: str = "resnet", **env) -> subprocess.Popen:
    environment = {
        **os.environ,
        **env,
        "MODEL_NAME": str(model_dir(arch)),
        "SERVE_MODE": "pod",
        "ALLOW_PRIVATE_URLS": "true",
        "WARMUP": "false",
        "SHUTDOWN_GRACE_S": str(grace_s),
    }
    return subprocess.Popen(
        [sys.executable, "handler.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_ready(url: str, process: subprocess.Popen) -> None:
    import time

    import requests

    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).json()["status"] == "ready":
                return
        except requests.RequestException:
            assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_an_idle_pod_stops_at_once_and_a_second_signal_does_not_wait(model_dir, httpserver):
    """Ctrl+C on a pod that ran no /run job: no 60 s grace. With a job in flight /health says
    draining, and a second Ctrl+C stops it without waiting for the job or the grace."""
    import signal
    import threading

    import requests
    from werkzeug import Response

    from conftest import free_port, noise_image

    port = free_port()
    idle = _pod(model_dir, port)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", idle)
        idle.send_signal(signal.SIGINT)
        assert idle.wait(timeout=20) == 0  # the grace is 60 s
    finally:
        idle.kill()

    release = threading.Event()
    httpserver.expect_request("/slow.png").respond_with_handler(
        lambda _r: release.wait(30) or Response(encode(noise_image(1)), mimetype="image/png")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    busy = _pod(model_dir, port)
    try:
        _wait_ready(url, busy)
        job = {"input": {"image": httpserver.url_for("/slow.png")}}
        requests.post(f"{url}/run", json=job, timeout=10).raise_for_status()
        busy.send_signal(signal.SIGINT)
        import time

        deadline = time.monotonic() + 10
        while requests.get(f"{url}/health", timeout=5).json()["status"] != "draining":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        busy.send_signal(signal.SIGINT)
        assert busy.wait(timeout=20) is not None  # stopped; the job would have taken 30 s
    finally:
        release.set()
        busy.kill()


def test_a_list_option_given_as_a_word_shows_the_list_form(make_worker):
    output = run_job(make_worker("clip"), {"image": b64(photo("chelsea")), "labels": "cat"})
    assert """a list is JSON, e.g. -o 'labels=["cat"]'""" in output["error"]


def test_the_readmes_pod_calls_run_as_written(model_dir):
    """The pod block's curl commands, against the tiny CLIP pod it says they are for (with a
    key, as on RunPod): every answer is a completed job with no error in it."""
    from conftest import free_port

    commands = _readme_block("A test runs this block against a local pod")
    assert commands[0].startswith("POD=http://localhost:8000")
    port = free_port()
    pod = _pod(model_dir, port, arch="clip", POD_API_KEY="readme-key")
    try:
        _wait_ready(f"http://127.0.0.1:{port}", pod)
        environment = {**os.environ, "POD": f"http://127.0.0.1:{port}", "POD_API_KEY": "readme-key"}
        for command in commands[1:]:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=environment,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
            answer = json.loads(done.stdout)
            if "/health" in command:
                assert answer["status"] == "ready"
                continue
            output = answer.get("output", answer)  # /runsync wraps it, /predict does not
            assert answer.get("status", "COMPLETED") == "COMPLETED", (command, answer)
            assert output["results"], (command, answer)
            assert all("error" not in r for r in output["results"]), (command, answer)
            assert all("labels" in r for r in output["results"])
    finally:
        pod.kill()


def test_option_help_shows_the_limits_in_force(make_worker):
    """The README shows the defaults; the served worker's form, OpenAPI and demo page show the
    values it runs with, and each names the setting that changes it."""
    from vision_worker.docs import render_tasks
    from vision_worker.forms import demo_html, predict_form_schema

    assert "Candidate labels, 1 to 64 (MAX_LABELS)" in render_tasks()
    task = make_worker("clip", MAX_LABELS=7).task
    form = predict_form_schema(task)["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "1 to 7 (MAX_LABELS)" in form["properties"]["labels"]["description"]
    assert "1 to 7 (MAX_LABELS)" in demo_html(task)


@pytest.mark.parametrize(("arch", "nested"), [("florence2", "region"), ("sam", "prompts")])
def test_nested_options_are_written_out_in_the_form_and_the_demo_page(make_worker, arch, nested):
    """A region or a mask prompt is a model of its own: the form's OpenAPI and the demo page
    carry its fields, not a "#/$defs/..." reference that resolves to nothing there."""
    from vision_worker.forms import demo_html, predict_form_schema

    task = make_worker(arch).task
    form = predict_form_schema(task)["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "$ref" not in json.dumps(form)
    assert "$defs" not in json.dumps(form)
    field = json.dumps(form["properties"][nested])
    assert ('"xmin"' in field) if arch == "florence2" else ('"points"' in field), field
    assert "#/$defs/" not in demo_html(task)
