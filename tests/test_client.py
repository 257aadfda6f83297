"""The command-line client end to end against a real pod server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from conftest import encode, noise_image, photo, running_server
from vision_worker.client import EndpointClient, EndpointError, collect_sources, main
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

KEY = "client-test-key"


@pytest.fixture(scope="module")
def pod(model_dir):
    settings = load_settings(
        MODEL_NAME=str(model_dir("vit")), WARMUP=False, POD_API_KEY=KEY, ALLOW_PRIVATE_URLS=True
    )
    with running_server(Worker.start(settings)) as (url, _server):
        yield url


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(encode(photo("chelsea"), "JPEG"))
    (folder / "nested" / "rocket.png").write_bytes(encode(photo("rocket")))
    (folder / "notes.txt").write_text("not an image, skipped when walking a folder")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    return folder, broken


@pytest.mark.parametrize("mode", [[], ["--sync"]])
def test_cli_prints_one_json_line_per_image_in_order(
    pod, images, httpserver, capsys, monkeypatch, mode
):
    folder, broken = images
    httpserver.expect_request("/remote.png").respond_with_data(encode(noise_image(9)))
    url = httpserver.url_for("/remote.png")
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)

    status = main(
        [
            str(folder),
            str(broken),
            url,
            "--endpoint",
            f"{pod}/v2/abc",
            "--top-k",
            "2",
            "--images-per-job",
            "2",
            "--no-progress",
            *mode,
        ]
    )

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in records] == [
        str(folder / "cat.jpg"),
        str(folder / "nested" / "rocket.png"),
        str(broken),
        url,
    ]
    assert [len(r.get("labels", [])) for r in records] == [2, 2, 0, 2]
    assert records[2]["error"]["code"] == "invalid_image"
    assert status == 1  # one image failed


def test_wrong_key_is_reported_clearly(pod):
    client = EndpointClient(pod, "wrong")
    with pytest.raises(EndpointError, match="unauthorized"):
        client.run_sync({"image": "x"})


def test_a_failed_job_raises_with_the_workers_sentence(pod):
    client = EndpointClient(pod, KEY, poll_s=0.05)
    with pytest.raises(EndpointError, match='FAILED: unknown input key "colour"'):
        client.run_async({"image": "x", "colour": "red"})


def test_transient_gateway_errors_are_retried(httpserver):
    output = {"results": [{"caption": "a cat"}]}
    httpserver.expect_oneshot_request("/runsync").respond_with_data("busy", 503)
    httpserver.expect_oneshot_request("/runsync").respond_with_data("slow down", 429)
    httpserver.expect_request("/runsync").respond_with_json({"id": "j1", "status": "IN_PROGRESS"})
    httpserver.expect_request("/status/j1").respond_with_json(
        {"id": "j1", "status": "COMPLETED", "output": output}
    )
    client = EndpointClient(httpserver.url_for(""), "k", poll_s=0.01)
    assert client.run_sync({"image": "x"}) == output
    auth = {request.headers.get("Authorization") for request, _ in httpserver.log}
    assert auth == {"Bearer k"}


def test_collect_sources_keeps_urls_and_encodes_files(images):
    folder, _ = images
    sources = collect_sources(["https://example.com/a.png", str(folder)])
    assert sources[0].value == "https://example.com/a.png"
    assert [s.label.rsplit("/", 1)[-1] for s in sources[1:]] == ["cat.jpg", "rocket.png"]
    assert sources[1].value.startswith("/9j/")  # base64 of a JPEG


def test_cli_passes_any_task_option_with_dash_o(pod, images, capsys, monkeypatch):
    folder, _ = images
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    status = main(
        [str(folder / "cat.jpg"), "--endpoint", pod, "-o", "top_k=1", "--sync", "--no-progress"]
    )
    record = json.loads(capsys.readouterr().out)
    assert status == 0
    assert len(record["labels"]) == 1
    assert main([str(folder / "cat.jpg"), "--endpoint", pod, "-o", "top_k"]) == 2


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["{tmp}/missing.jpg"], "no such file or folder: {tmp}/missing.jpg"),
        (["{tmp}/empty"], "folder {tmp}/empty has no image files"),
    ],
)
def test_cli_checks_its_inputs_before_sending(pod, tmp_path, capsys, inputs, message):
    (tmp_path / "empty").mkdir()
    status = main([i.format(tmp=tmp_path) for i in inputs] + ["--endpoint", pod])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.startswith(f"vision-worker-client: {message.format(tmp=tmp_path)}")
    assert len(captured.err.splitlines()) == 1


def test_cli_fails_fast_with_one_line_when_the_endpoint_is_down(images, capsys):
    import time

    from conftest import free_port

    folder, _ = images
    started = time.monotonic()
    status = main([str(folder), "--endpoint", f"http://127.0.0.1:{free_port()}", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2
    assert time.monotonic() - started < 5  # not 15 s of retries per job
    assert captured.out == ""
    assert captured.err.startswith("vision-worker-client: cannot reach http://127.0.0.1:")
    assert len(captured.err.splitlines()) == 1
