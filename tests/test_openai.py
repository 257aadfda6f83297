"""The `openai` client, unchanged, against the pod's /v1 routes and against the serverless
handler's OpenAI passthrough (through a stand-in for RunPod's gateway, which turns
/openai/v1/... calls into {"openai_route", "openai_input"} jobs as worker-vllm receives them):
answers equal the worker's own ask and embed results for the same images."""

from __future__ import annotations

import base64
import inspect
import threading
import time

import numpy as np
import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai import OpenAI

from conftest import b64, encode, free_port, photo, run_job, running_server
from vision_worker.serverless import Serverless
from vision_worker.settings import load_settings
from vision_worker.worker import Worker

KEY = "openai-test-key"
QUESTION = "What is in the image?"


def _data_uri(name: str) -> str:
    return "data:image/png;base64," + b64(photo(name))


def _chat(client: OpenAI, image_url: str, **extra):
    content = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": image_url}},
    ]
    return client.chat.completions.create(
        model="served-llava", messages=[{"role": "user", "content": content}], max_tokens=6, **extra
    )


@pytest.fixture(scope="module")
def llava_pod(model_dir):
    settings = load_settings(
        MODEL_NAME=str(model_dir("llava")),
        SERVED_MODEL_NAME="served-llava",
        WARMUP=False,
        POD_API_KEY=KEY,
        ALLOW_PRIVATE_URLS=True,
    )
    worker = Worker.start(settings)
    with running_server(worker) as (url, _):
        yield worker, url


def test_chat_with_an_image_url_and_a_data_uri_equals_the_workers_answer(llava_pod, httpserver):
    worker, url = llava_pod
    httpserver.expect_request("/cat.png").respond_with_data(
        encode(photo("chelsea")), content_type="image/png"
    )
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["served-llava"]
    for image_url, name in (
        (httpserver.url_for("/cat.png"), "chelsea"),
        (_data_uri("coffee"), "coffee"),
    ):
        completion = _chat(client, image_url)
        own = run_job(
            worker, {"image": b64(photo(name)), "question": QUESTION, "max_new_tokens": 6}
        )
        expected = own["results"][0]
        choice = completion.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content == expected["answer"]
        assert choice.finish_reason == expected["finish_reason"]
        assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
        assert completion.usage.completion_tokens == expected["usage"]["completion_tokens"]
        assert completion.model == "served-llava"


def test_streamed_chat_carries_the_same_answer_and_usage_when_asked(llava_pod):
    _, url = llava_pod
    for base in (f"{url}/v1", f"{url}/openai/v1"):  # RunPod's path works on the pod too
        client = OpenAI(base_url=base, api_key=KEY)
        plain = _chat(client, _data_uri("rocket"))
        chunks = list(
            _chat(client, _data_uri("rocket"), stream=True, stream_options={"include_usage": True})
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices]
        assert "".join(p or "" for p in pieces) == plain.choices[0].message.content
        # Token by token: the answer's words came in several events, not one at the end.
        assert len([p for p in pieces if p]) > 1
        finishes = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        assert finishes == [plain.choices[0].finish_reason]
        assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_unsupported_parameters_wrong_models_and_keys_get_openais_errors(llava_pod):
    _, url = llava_pod
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, _data_uri("chelsea"), n=2)
    assert caught.value.body["param"] == "n"
    with pytest.raises(
        openai.BadRequestError, match="Unrecognized request argument supplied: tools"
    ):
        _chat(client, _data_uri("chelsea"), extra_body={"tools": []})
    with pytest.raises(openai.BadRequestError, match="no image_url part"):
        client.chat.completions.create(
            model="served-llava", messages=[{"role": "user", "content": "hello"}]
        )
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
        )
    for stream in (False, True):  # a streamed answer's refusal is a response, not a stream
        with pytest.raises(openai.BadRequestError, match="image 0"):
            _chat(client, "data:image/png;base64,bm90IGFuIGltYWdl", stream=stream)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()


def test_sampling_with_a_seed_repeats(llava_pod):
    _, url = llava_pod
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    answers = {
        _chat(client, _data_uri("camera"), temperature=1.2, seed=3).choices[0].message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def test_embeddings_of_texts_and_images_equal_the_workers_own(model_dir):
    settings = load_settings(
        MODEL_NAME=str(model_dir("clip")), TASK="embed", WARMUP=False, POD_API_KEY=KEY
    )
    worker = Worker.start(settings)
    with running_server(worker) as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
        texts = client.embeddings.create(model=settings.MODEL_NAME, input=["a cat", "a rocket"])
        images = client.embeddings.create(
            model=settings.MODEL_NAME,
            input=[_data_uri("chelsea")],
            extra_body={"modality": "image"},
        )
        as_floats = client.embeddings.create(
            model=settings.MODEL_NAME, input="a cat", encoding_format="float"
        )
        with pytest.raises(openai.BadRequestError, match="cannot be shortened"):
            client.embeddings.create(model=settings.MODEL_NAME, input="a cat", dimensions=3)
    own = run_job(worker, {"images": [b64(photo("chelsea"))], "texts": ["a cat", "a rocket"]})
    for ours, theirs in zip(texts.data, own["texts"], strict=True):
        np.testing.assert_allclose(ours.embedding, theirs["embedding"], atol=1e-6)
    np.testing.assert_allclose(images.data[0].embedding, own["results"][0]["embedding"], atol=1e-6)
    np.testing.assert_allclose(as_floats.data[0].embedding, own["texts"][0]["embedding"], atol=1e-6)
    assert texts.usage.prompt_tokens == sum(t["tokens"] for t in own["texts"]) > 0


# --- serverless: the handler behind a stand-in for RunPod's OpenAI gateway ----------------
def _gateway(serverless: Serverless) -> FastAPI:
    """/v2/<endpoint>/openai/v1/... as RunPod's gateway serves it (inferred from worker-vllm, as
    RunPod documents only the client side): the body becomes a job, the handler's output (the
    one response of an aggregated stream) the reply, yielded text the event stream."""
    app = FastAPI()

    @app.api_route("/v2/endpoint/openai/{path:path}", methods=["GET", "POST"])
    async def passthrough(path: str, request: Request):
        body = await request.json() if request.method == "POST" else None
        job = {"id": "job-1", "input": {"openai_route": "/" + path, "openai_input": body}}
        handler = serverless.config["handler"]
        if inspect.isasyncgenfunction(handler):
            outputs = [chunk async for chunk in handler(job)]
        else:
            outputs = [await handler(job)]
        if all(isinstance(o, str) for o in outputs):
            return StreamingResponse(iter(outputs), media_type="text/event-stream")
        (output,) = outputs
        status = 400 if "error" in output else 200
        return JSONResponse(output, status)

    return app


@pytest.fixture(scope="module")
def serverless_llava(model_dir):
    settings = load_settings(MODEL_NAME=str(model_dir("llava")), WARMUP=False, STREAM_RESULTS=True)
    worker = Worker.start(settings)
    port = free_port()
    config = uvicorn.Config(
        _gateway(Serverless(worker, settings)), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield worker, f"http://127.0.0.1:{port}/v2/endpoint/openai/v1", settings
    server.should_exit = True
    thread.join(timeout=30)


def test_the_serverless_handler_answers_the_openai_client_streaming_and_not(serverless_llava):
    worker, base, settings = serverless_llava
    client = OpenAI(base_url=base, api_key="runpod-key")
    assert [m.id for m in client.models.list()] == [settings.MODEL_NAME]
    completion = client.chat.completions.create(
        model=settings.MODEL_NAME,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _data_uri("astronaut")}},
                    {"type": "text", "text": QUESTION},
                ],
            },
        ],
        max_completion_tokens=5,
    )
    own = run_job(
        worker,
        {
            "image": b64(photo("astronaut")),
            "question": QUESTION,
            "system": "Answer briefly.",
            "max_new_tokens": 5,
        },
    )
    assert completion.choices[0].message.content == own["results"][0]["answer"]
    stream = client.chat.completions.create(
        model=settings.MODEL_NAME,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "image_url", "image_url": {"url": _data_uri("astronaut")}},
                ],
            }
        ],
        max_tokens=5,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    unstreamed = run_job(
        worker, {"image": b64(photo("astronaut")), "question": QUESTION, "max_new_tokens": 5}
    )
    assert "".join(pieces) == unstreamed["results"][0]["answer"]
    assert len([p for p in pieces if p]) > 1  # yielded as generated, each a round trip


def test_a_non_streaming_worker_says_how_to_stream(model_dir):
    import asyncio

    settings = load_settings(MODEL_NAME=str(model_dir("llava")), WARMUP=False)
    serverless = Serverless(Worker.start(settings), settings)
    job = {
        "id": "job-1",
        "input": {
            "openai_route": "/v1/chat/completions",
            "openai_input": {"messages": [{"role": "user", "content": "hi"}], "stream": True},
        },
    }
    output = asyncio.run(serverless.handler(job))
    assert "set STREAM_RESULTS=true" in output["error"]["message"]
    assert output["error"]["param"] == "stream"
    models = asyncio.run(serverless.handler({"id": "2", "input": {"openai_route": "/v1/models"}}))
    assert models["data"][0]["id"] == settings.MODEL_NAME
    base64.b64decode(b64(photo("chelsea")))  # the data URIs above are plain base64


def test_several_images_in_one_message_get_one_answer_about_them_all(llava_pod):
    """As vLLM serves a message of several image_url parts: one answer, the worker's own
    `together` answer for those images in that order."""
    worker, url = llava_pod
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    names = ["chelsea", "rocket"]
    content = [
        {"type": "text", "text": QUESTION},
        *({"type": "image_url", "image_url": {"url": _data_uri(name)}} for name in names),
    ]
    completion = client.chat.completions.create(
        model="served-llava", messages=[{"role": "user", "content": content}], max_tokens=6
    )
    own = run_job(
        worker,
        {
            "images": [b64(photo(name)) for name in names],
            "question": QUESTION,
            "together": True,
            "max_new_tokens": 6,
        },
    )
    assert completion.choices[0].message.content == own["results"][0]["answer"]
    assert completion.usage.prompt_tokens == own["results"][0]["usage"]["prompt_tokens"]
