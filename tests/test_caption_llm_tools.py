"""The LLM entity parser, the VLM caption refiner, their chat client, cache and tools, against a
fake OpenAI-compatible server on 127.0.0.1 started by the tests (slow, failing and malformed
answers included). No request leaves the machine."""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniovseg.data.caption_refinement import CaptionRefiner, image_data_url
from uniovseg.data.chat_client import (
    ChatBudgetExhausted,
    ChatClient,
    ChatEndpoint,
    ChatEndpointError,
    ChatError,
)
from uniovseg.data.entity_extraction import RuleBasedEntityParser
from uniovseg.data.llm_entities import LLMEntityParser, parse_entity_answer
from uniovseg.data.prompts import load_prompt
from uniovseg.data.response_cache import ResponseCache

REPO = Path(__file__).resolve().parents[1]


class FakeChatServer:
    """An OpenAI-compatible chat server on 127.0.0.1 with scripted behaviours.

    ``plan`` is consumed one behaviour per request; when it is empty, requests are answered
    ("ok"). Behaviours: "ok", "malformed" (content that is not the asked JSON), "not_chat"
    (a body that is not a chat completion), "wrong_count", "slow" (answers after the client's
    timeout), "drop" (closes the connection), or an int HTTP status (429 with Retry-After 0).
    Entities are answered by the rule parser with an article and a generic word added, so the
    clean-up is visible; refinements are "refined: <caption>".
    """

    def __init__(self) -> None:
        self.plan: list = []
        self.requests: list[dict] = []
        self.slow_seconds = 0.6
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                behaviour = server.plan.pop(0) if server.plan else "ok"
                if behaviour == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if behaviour == "slow":
                    time.sleep(server.slow_seconds)
                if isinstance(behaviour, int):
                    self.send_response(behaviour)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "scripted failure"}}')
                    return
                payload = server.answer(body, behaviour)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, body: dict, behaviour: str):
        if behaviour == "not_chat":
            return b"<html>proxy error</html>"
        user = body["messages"][-1]["content"]
        if isinstance(user, list):  # a vision request: text + image parts
            caption = user[0]["text"].split(": ", 1)[1]
            content = "  refined: " + caption + " "
        elif not user.startswith('{"captions"'):
            content = "hello"
        else:
            captions = [c.split(". ", 1)[1] for c in json.loads(user)["captions"]]
            rule = RuleBasedEntityParser()
            lists = [["the " + e.title() for e in rule(c)] + ["photo"] for c in captions]
            if behaviour == "wrong_count":
                lists = lists[:-1]
            content = "```json\n" + json.dumps({"entities": lists}) + "\n```"
        if behaviour == "malformed":
            content = '{"entities": [["red car"'
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeChatServer()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _no_endpoint_from_the_environment(monkeypatch):
    """The tools read endpoints from the environment: make sure no test can reach a real one."""
    for name in ("BASE_URL", "MODEL", "API_KEY"):
        for prefix in ("UNIOVSEG_LLM", "UNIOVSEG_VLM", "OPENAI"):
            monkeypatch.delenv(f"{prefix}_{name}", raising=False)


def _client(server, **kwargs) -> ChatClient:
    args = {"timeout": 10.0, "max_retries": 2, "backoff": 0.0, "sleep": lambda s: None}
    args.update(kwargs)
    return ChatClient(ChatEndpoint(server.base_url, "fake-llm", "sk-test"), **args)


def _tool(name: str):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


# ------------------------------------------------------------------ the client
def test_client_retries_every_transient_failure_then_answers(server):
    waits = []
    client = _client(server, max_retries=6, backoff=0.5, max_backoff=1.0, sleep=waits.append)
    server.plan = [503, 429, "drop", "not_chat", "malformed", "wrong_count"]
    answer = client.complete(
        [{"role": "user", "content": json.dumps({"captions": ["1. a red car"]})}],
        parse=lambda c: parse_entity_answer(c, 1),
    )
    assert answer == [["the Red Car", "photo"]]
    assert client.requests_sent == 7 and len(server.requests) == 7
    # Retry-After: 0 of the HTTP errors wins over the back-off; then 0.5 * 2^k, capped at 1.
    assert waits == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "fake-llm" and request["body"]["temperature"] == 0.0


def test_client_retries_a_slow_server_after_its_timeout(server):
    server.slow_seconds = 2.0
    client = _client(server, timeout=0.5, max_retries=5)
    server.plan = ["slow"]
    assert client.complete([{"role": "user", "content": "hi"}]) == "hello"
    assert client.requests_sent >= 2  # the first attempt timed out


def test_client_gives_up_refuses_a_bad_endpoint_and_keeps_its_budget(server):
    client = _client(server, max_retries=2)
    server.plan = ["malformed"] * 3
    with pytest.raises(ChatError, match="3 attempt.*bad answer"):
        client.complete([{"role": "user", "content": "{}"}], parse=json.loads)
    server.plan = [401]
    with pytest.raises(ChatEndpointError, match="HTTP 401.*base URL, model and key"):
        client.complete([{"role": "user", "content": "hi"}])
    assert client.requests_sent == 4  # no retry after 401
    server.plan = [400]
    with pytest.raises(ChatError, match="HTTP 400"):  # not retried either: a bad request
        client.complete([{"role": "user", "content": "hi"}])

    budget = _client(server, max_requests=2)
    server.plan = [500, 500, 500]
    with pytest.raises(ChatBudgetExhausted, match="budget of 2"):
        budget.complete([{"role": "user", "content": "hi"}])
    assert budget.requests_sent == 2 and budget.budget_left == 0


def test_endpoint_comes_from_flags_then_environment(monkeypatch):
    monkeypatch.setenv("UNIOVSEG_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("UNIOVSEG_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    endpoint = ChatEndpoint.resolve(
        base_url=None, model=None, api_key=None, env_prefix="UNIOVSEG_LLM"
    )
    assert endpoint == ChatEndpoint("http://127.0.0.1:9/v1", "env-model", "sk-env")
    flagged = ChatEndpoint.resolve(
        base_url="http://127.0.0.1:8/v1", model="m", api_key="k", env_prefix="UNIOVSEG_LLM"
    )
    assert flagged == ChatEndpoint("http://127.0.0.1:8/v1", "m", "k")
    with pytest.raises(ValueError, match="UNIOVSEG_VLM_MODEL"):
        ChatEndpoint.resolve(base_url=None, model=None, api_key=None, env_prefix="UNIOVSEG_VLM")


# ------------------------------------------------------------------ the cache
def test_cache_resumes_refuses_other_settings_and_never_leaves_a_partial_file(tmp_path):
    path = str(tmp_path / "cache.jsonl")
    cache = ResponseCache(path, meta={"task": "entities", "model": "a"}, save_interval=3600)
    cache.put("a red car", ["red car"])
    cache.maybe_save()  # within the interval: nothing written yet
    assert not (tmp_path / "cache.jsonl").exists()
    cache.save()
    cache.put("café", ["café"])
    cache.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.jsonl"]  # no temporary left

    again = ResponseCache(path, meta={"task": "entities", "model": "a"})
    assert len(again) == 2 and again.get("café") == ["café"] and "a red car" in again
    with pytest.raises(ValueError, match="model differ"):
        ResponseCache(path, meta={"task": "entities", "model": "b"})
    (tmp_path / "other.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n')
    with pytest.raises(ValueError, match="not a uniovseg response cache"):
        ResponseCache(str(tmp_path / "other.jsonl"), meta={})


# ------------------------------------------------------------------ LLM entities
CAPTIONS = [
    "A red car parked next to a tall building.",
    "Two dogs playing with a frisbee in the park",
    "a photo of it",
    "a wooden bench near the lake",
    "a yellow bus on the road",
]


def test_llm_parser_batches_cleans_caches_and_resumes(server, tmp_path):
    prompt = load_prompt("entity_extraction")
    meta = LLMEntityParser.cache_meta("fake-llm", prompt)
    cache_path = str(tmp_path / "llm_cache.jsonl")
    parser = LLMEntityParser(
        _client(server), cache=ResponseCache(cache_path, meta=meta), batch_size=2
    )
    counts = parser.parse_many(CAPTIONS + CAPTIONS[:1])  # a repeated caption is asked once
    assert counts == {"cached": 0, "answered": 5, "failed": 0, "not_sent": 0}
    assert len(server.requests) == 3  # 2 + 2 + 1 captions
    system, user = server.requests[0]["body"]["messages"]
    assert system == {"role": "system", "content": prompt}
    assert json.loads(user["content"]) == {"captions": ["1. " + CAPTIONS[0], "2. " + CAPTIONS[1]]}
    # Articles, case and generic heads ("photo") go through the offline parsers' clean-up.
    assert parser(CAPTIONS[0]) == ["red car", "tall building"]
    assert parser(CAPTIONS[2]) == []
    assert parser("never asked") is None
    assert parser.name == "llm:fake-llm"

    resumed = LLMEntityParser(_client(server), cache=ResponseCache(cache_path, meta=meta))
    assert resumed.parse_many(CAPTIONS)["cached"] == 5 and len(server.requests) == 3
    assert resumed(CAPTIONS[1]) == ["dogs", "frisbee", "park"]


def test_llm_parser_skips_a_failing_batch_and_stops_at_the_budget(server, tmp_path, caplog):
    parser = LLMEntityParser(_client(server, max_retries=1), batch_size=2)
    server.plan = ["wrong_count", "malformed"]  # batch 1 fails twice; batches 2, 3 answer
    with caplog.at_level("WARNING"):
        counts = parser.parse_many(CAPTIONS)
    assert counts == {"cached": 0, "answered": 3, "failed": 2, "not_sent": 0}
    assert "LLM batch of 2 caption(s) skipped" in caplog.text
    assert parser(CAPTIONS[0]) is None and parser(CAPTIONS[2]) == []

    budget = LLMEntityParser(_client(server, max_requests=1), batch_size=2)
    assert budget.parse_many(CAPTIONS) == {"cached": 0, "answered": 2, "failed": 0, "not_sent": 3}


def _manifest(tmp_path) -> Path:
    manifest = tmp_path / "captions.jsonl"
    rows = [{"image": f"{i}.jpg", "caption": c} for i, c in enumerate(CAPTIONS)]
    rows[1]["entities"] = ["hand-written"]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def test_extract_entities_llm_backend_resumes_after_the_budget_and_a_crash(server, tmp_path):
    tool = _tool("extract_entities")
    manifest, out = _manifest(tmp_path), tmp_path / "out.jsonl"
    argv = ["--manifest", str(manifest), "--output", str(out), "--backend", "llm"]
    argv += ["--base-url", server.base_url, "--model", "fake-llm", "--batch-size", "2"]
    argv += ["--backoff", "0"]
    summary = tool.main([*argv, "--max-requests", "1"])
    assert summary["backend"] == "llm:fake-llm" and summary["requests"] == 1
    assert summary["llm"] == {"cached": 0, "answered": 2, "failed": 0, "not_sent": 2}
    assert (summary["parsed"], summary["kept"], summary["failed"]) == (2, 1, 2)
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.startswith('{"')]
    assert rows[0]["entities"] == ["red car", "tall building"]
    assert rows[0]["entity_parser"] == "llm:fake-llm"
    assert rows[1]["entities"] == ["hand-written"] and "entity_parser" not in rows[1]
    assert "entities" not in rows[3]  # not asked yet: auto training parses it
    assert out.read_text().splitlines()[-1] == "{not json"

    # An endpoint that starts refusing (401) stops the run: one-line error, cache kept,
    # the output left as it was.
    before = out.read_bytes()
    server.plan = [401]
    with pytest.raises(SystemExit):
        tool.main(argv)
    assert out.read_bytes() == before
    cache = tmp_path / "out.jsonl.llm_cache.jsonl"
    assert len(cache.read_text().splitlines()) == 1 + 2  # header + the first batch

    server.requests.clear()
    summary = tool.main(argv)  # resume: only the two missing captions are asked
    assert len(server.requests) == 1 and summary["llm"]["cached"] == 2
    assert (summary["parsed"], summary["failed"]) == (4, 0)
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.startswith('{"')]
    assert rows[4]["entities"] == ["yellow bus", "road"]


def test_extract_entities_llm_needs_an_endpoint_before_any_work(tmp_path, capsys):
    tool = _tool("extract_entities")
    manifest, out = _manifest(tmp_path), tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--manifest", str(manifest), "--output", str(out), "--backend", "llm"])
    assert exit_info.value.code == 1
    assert "--base-url" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------ caption refinement
def test_image_data_url_round_trips_and_downscales(tmp_path):
    path = tmp_path / "im.png"
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(path)
    url = image_data_url(str(path))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == path.read_bytes()
    small = image_data_url(str(path), max_side=20)
    assert small.startswith("data:image/jpeg;base64,")
    import io

    with Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))) as im:
        assert im.size == (20, 10)


def test_refine_captions_tool_sends_images_caches_and_skips_failures(server, tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / name)
    manifest, out = tmp_path / "captions.jsonl", tmp_path / "refined.jsonl"
    rows = [
        {"image": "images/a.png", "caption": "a car"},
        {"image": "images/b.png", "caption": "a dog"},
        {"image": "images/missing.png", "caption": "a cat"},
        {"image": "images/a.png", "caption": "kept", "refined_caption": "as it was"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    tool = _tool("refine_captions")
    argv = ["--manifest", str(manifest), "--output", str(out), "--model", "fake-vlm"]
    argv += ["--base-url", server.base_url, "--max-retries", "1", "--backoff", "0"]
    server.plan = ["ok", 500, 500]  # b.png fails twice
    summary = tool.main(argv)
    assert summary["backend"] == "vlm:fake-vlm"
    assert (summary["refined"], summary["failed"], summary["unreadable_image"]) == (1, 1, 1)
    assert (summary["kept"], summary["copied"], summary["not_an_object"]) == (1, 1, 1)
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert written[0]["refined_caption"] == "refined: a car"
    assert written[0]["refined_by"] == "vlm:fake-vlm"
    assert "refined_caption" not in written[1] and written[3]["refined_caption"] == "as it was"
    assert written[4] == [1, 2]
    user = server.requests[0]["body"]["messages"][1]["content"]
    assert user[0] == {"type": "text", "text": "Original caption: a car"}
    image_url = user[1]["image_url"]["url"]
    assert image_url.startswith("data:image/png;base64,")
    assert base64.b64decode(image_url.split(",", 1)[1]) == (tmp_path / "images/a.png").read_bytes()

    server.requests.clear()
    summary = tool.main(argv)  # resume: a.png from the cache, only b.png asked
    assert len(server.requests) == 1 and summary["refined"] == 2 and summary["failed"] == 0


def test_refiner_rejects_empty_answers_and_respects_the_budget(server, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    refiner = CaptionRefiner(_client(server, max_requests=1))
    assert refiner.refine("a.png", str(path), "a car") == "refined: a car"
    with pytest.raises(ChatBudgetExhausted):
        refiner.refine("a.png", str(path), "another caption")
