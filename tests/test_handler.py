"""handler.py as RunPod runs it: cold start at import, the SDK's local test mode, bad config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vision_worker.config import ConfigError
from vision_worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def _handler(model: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MODEL_NAME": str(model), "HF_HUB_OFFLINE": "1", **env}
    environment.pop("RUNPOD_WEBHOOK_GET_JOB", None)  # its absence selects local test mode
    return subprocess.run(
        [sys.executable, "handler.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_handler_py_prints_test_input_json_output_as_json(model_dir):
    done = _handler(model_dir("vit-gpt2"))
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    output = json.loads(done.stdout)  # stdout is the job's output and nothing else
    assert [set(r) for r in output["results"]] == [{"caption"}, {"caption"}]
    # Logs go to stderr, in one format with level names, and say what is serving.
    assert " INFO vision_worker.worker: serving " in done.stderr
    # The torchvision-backed ("fast") processor: the Docker image's path, and the tests'.
    assert "(task caption) on cpu as torch.float32, image processor ViTImageProcessor," in (
        done.stderr
    )
    # A quiet start: no fallback warnings, progress bars or dumps of the job's base64.
    assert "fallback" not in done.stderr.lower()
    assert "Loading weights" not in done.stderr
    assert "iVBOR" not in done.stderr + done.stdout


def test_image_flag_runs_local_files_and_folders_with_options(model_dir, tmp_path):
    from conftest import encode, photo

    (tmp_path / "more").mkdir()
    (tmp_path / "cat.jpg").write_bytes(encode(photo("chelsea"), "JPEG"))
    (tmp_path / "more" / "rocket.png").write_bytes(encode(photo("rocket")))
    done = _handler(
        model_dir("resnet"),
        "--image",
        str(tmp_path / "cat.jpg"),
        str(tmp_path / "more"),
        "--top-k",
        "2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = json.loads(done.stdout)
    assert [len(r["labels"]) for r in output["results"]] == [2, 2]
    labels = _handler(
        model_dir("clip"), "--image", str(tmp_path / "cat.jpg"), "-o", 'labels=["a cat", "a dog"]'
    )
    assert {e["label"] for e in json.loads(labels.stdout)["results"][0]["labels"]} == {
        "a cat",
        "a dog",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "no/such/file.jpg"], "no such file or folder: no/such/file.jpg"),
        (["--image", "{empty}"], "has no image files"),
        (["--image", "{empty}", "-o", "top_k"], "an option is KEY=VALUE, got 'top_k'"),
    ],
)
def test_a_bad_command_line_gets_one_line_and_exit_2(model_dir, tmp_path, args, message):
    done = _handler(model_dir("resnet"), *(a.format(empty=tmp_path) for a in args))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("python handler.py: ")
    assert message in last
    assert "Traceback" not in done.stderr


def test_test_input_argument_overrides_the_file(model_dir):
    job = {"input": {"image": "data:image/png;base64,not-really", "top_k": 2}}
    done = _handler(model_dir("resnet"), "--test_input", json.dumps(job))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["results"][0]["error"]["code"] == "invalid_image"


def test_an_invalid_job_is_reported_as_failed(model_dir):
    done = _handler(model_dir("resnet"), "--test_input", json.dumps({"input": {"images": []}}))
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "error": '"images" is empty; send at least one image',
        "error_code": "invalid_input",
    }


def test_test_input_json_is_a_valid_job():
    job = json.loads((ROOT / "test_input.json").read_text())
    assert set(job) == {"input"}
    assert len(job["input"]["images"]) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MAX_BATCH_SIZE": 0}, "MAX_BATCH_SIZE: Input should be greater than or equal to 1"),
        ({"DTYPE": "float8"}, "DTYPE: Input should be 'auto', 'float32', 'float16' or 'bfloat16'"),
        ({"DEVICE": "tpu"}, "DEVICE: Value error, must be auto, cpu, cuda, cuda:N or mps"),
        ({"DEFAULT_MAX_NEW_TOKENS": 500}, "must not exceed MAX_NEW_TOKENS_LIMIT"),
    ],
)
def test_bad_configuration_fails_with_a_message_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load_settings(**overrides)
    assert message in str(caught.value)


def test_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")
    settings = load_settings()
    assert (settings.MAX_BATCH_SIZE, settings.ALLOW_PRIVATE_URLS) == (32, True)


def test_bad_environment_stops_cold_start_with_a_clear_message(model_dir):
    done = _handler(model_dir("resnet"), MAX_IMAGES_PER_JOB="lots")
    assert done.returncode != 0
    assert "MAX_IMAGES_PER_JOB: Input should be a valid integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_flag_starts_pod_mode_and_sigterm_drains_then_exits_0(model_dir, httpserver):
    """SIGTERM with a /run job in flight: new jobs get 503, the job finishes and its result
    stays readable at /status, then the process exits 0 (at once once the result is read,
    else after SHUTDOWN_GRACE_S)."""
    import signal
    import threading
    import time

    import requests
    from werkzeug import Response

    from conftest import encode, free_port, noise_image

    release = threading.Event()

    def slow_image(_request):
        release.wait(20)
        return Response(encode(noise_image(2)), mimetype="image/png")

    httpserver.expect_request("/slow.png").respond_with_handler(slow_image)
    port, health_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "MODEL_NAME": str(model_dir("resnet")),
        "SERVE_MODE": "pod",
        "ALLOW_PRIVATE_URLS": "true",
        "SHUTDOWN_GRACE_S": "2",
        "PORT_HEALTH": str(health_port),
    }
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = requests.get(f"{url}/health", timeout=2).json()
                if health["status"] == "ready":
                    break
            except requests.RequestException:
                assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert health["task"] == "classify"
        # RunPod's load balancer probes /ping on PORT_HEALTH.
        ping = requests.get(f"http://127.0.0.1:{health_port}/ping", timeout=5)
        assert (ping.status_code, ping.json()) == (200, {"status": "healthy"})
        job = json.loads((ROOT / "test_input.json").read_text())
        body = requests.post(f"{url}/runsync", json=job, timeout=60).json()
        assert body["status"] == "COMPLETED"
        slow = {"input": {"image": httpserver.url_for("/slow.png")}}
        job_id = requests.post(f"{url}/run", json=slow, timeout=10).json()["id"]

        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/health", timeout=5).json()["status"] != "draining":
            assert time.monotonic() < deadline, "the pod never started draining"
            time.sleep(0.1)
        refused = requests.post(f"{url}/run", json=job, timeout=10)
        assert refused.status_code == 503
        assert "shutting down" in refused.json()["error"]
        assert requests.get(f"{url}/status/{job_id}", timeout=10).json()["status"] == "IN_PROGRESS"
        release.set()
        deadline = time.monotonic() + 30
        while (status := requests.get(f"{url}/status/{job_id}", timeout=10).json())[
            "status"
        ] != "COMPLETED":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["output"]["results"][0]["labels"]
        assert process.wait(timeout=30) == 0
        assert "Application shutdown complete" in process.stdout.read()
    finally:
        release.set()
        process.kill()


def test_readme_documents_every_setting_with_its_default():
    from vision_worker.settings import ServingSettings as Settings

    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`{name}`" in readme, f"README's configuration table lacks {name}"
        default = field.default
        if isinstance(default, bool):
            default = str(default).lower()
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        if default not in (None, ""):
            assert f"`{default}`" in readme, f"README lacks the default of {name}: {default}"


def test_a_model_that_cannot_load_stops_cold_start_with_one_line(tmp_path):
    """A Hub id that is not cached, offline; and a path that is not there (said as such)."""
    done = _handler("someone/not-a-cached-model")
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        "vision-worker cannot start: model 'someone/not-a-cached-model' is not in the local"
    )
    assert "set MODEL_NAME to a local directory" in last_line
    assert "Traceback" not in done.stderr
    missing = tmp_path / "no-such-model"
    done = _handler(missing)
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line == f"vision-worker cannot start: MODEL_NAME={missing}: no such directory"
    assert "Traceback" not in done.stderr
