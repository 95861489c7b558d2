"""nmt.serve's API in-process (FastAPI's TestClient runs the app and its workers): answers equal to `nmt
translate`'s, every bad request refused with its status and a JSON error while the server goes on serving,
the API key, CORS, backpressure (503) and the timeout (504). The real-process tests are in
test_serve_process.py, the page's in test_serve_page.py."""

from __future__ import annotations

import functools

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nmt.errors import NMTError
from nmt.glossary import Glossary
from nmt.serve.app import ENDPOINTS, create_app
from nmt.serve.metrics import Metrics
from nmt.serve.service import Service, load_models, parse_model_spec
from nmt.serve.settings import BatchLimits, ServeSettings
from nmt.translator import Translator
from serve_fixtures import translate_command
from translation_fixtures import make_checkpoint, synthetic_sentences

LINES = synthetic_sentences(6, seed=21)
LINES[3] = ""
WAIT_S = 30
LONG_LINE = " ".join(synthetic_sentences(400, seed=5))  # well over 1024 subwords


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_api")
    return {"de-en": make_checkpoint(folder / "model.pt", seed=6),
            "plain": make_checkpoint(folder / "plain.pt", seed=7, attention="none")}


def make_client(checkpoints: dict[str, Path], raise_server_exceptions: bool = True, **settings: object
                ) -> TestClient:
    settings = ServeSettings(**settings)  # type: ignore[arg-type]
    metrics = Metrics(ENDPOINTS)
    specs = [str(checkpoints["de-en"]), f"plain={checkpoints['plain']}"]
    app = create_app(Service(load_models(specs, settings, "cpu", "fp32", metrics), settings), metrics)
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


@pytest.fixture(scope="module")
def client(checkpoints: dict[str, Path]) -> Iterator[TestClient]:
    with make_client(checkpoints, max_sentences=8, max_body_bytes=20_000) as client:
        yield client


@pytest.fixture(scope="module")
def reference(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[str]]:
    """`reference(*options)`: what `nmt translate` writes for LINES with those options (cached)."""
    folder = tmp_path_factory.mktemp("reference")
    cache: dict[tuple[str, ...], list[str]] = {}

    def get(*options: str) -> list[str]:
        if options not in cache:
            cache[options] = translate_command(checkpoints["de-en"], LINES, folder / str(len(cache)), *options)
        return cache[options]

    return get


def translate(client: TestClient, **body: object):
    return client.post("/v1/translate", json=body)


# ----------------------------------------------------------------------------------------------- answers


def test_translations_equal_nmt_translate_s_lines_in_input_order(client, reference) -> None:
    response = translate(client, text=LINES)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "de-en"
    assert [t["text"] for t in answer["translations"]] == reference()
    assert answer["translations"][3] == {"text": "", "score": 0.0, "nbest": [{"text": "", "score": 0.0,
                                                                                "log_prob": 0.0}]}
    assert "alignment" not in answer["translations"][0]
    one = translate(client, text=LINES[0]).json()
    assert [t["text"] for t in one["translations"]] == reference()[:1]


def test_beam_and_nbest_equal_nmt_translate_s_nbest_lines(client, reference) -> None:
    answer = translate(client, text=LINES, beam=4, nbest=3).json()
    expected: dict[int, list[tuple[str, str]]] = {}
    for line in reference("--beam", "4", "--nbest", "3"):
        index, text, score = line.split(" ||| ")
        expected.setdefault(int(index), []).append((text, score))
    for i, sentence in enumerate(answer["translations"]):
        assert [(h["text"], f"{h['score']:.4f}") for h in sentence["nbest"]] == expected[i]
        assert sentence["text"] == sentence["nbest"][0]["text"]
    greedy = translate(client, text=LINES, beam=1).json()
    assert [t["text"] for t in greedy["translations"]] == reference("--beam", "1")


def test_alignments_equal_nmt_translate_s_alignment_records(client, checkpoints, tmp_path) -> None:
    answer = translate(client, text=LINES, alignments=True).json()
    translate_command(checkpoints["de-en"], LINES, tmp_path, "--alignments", str(tmp_path / "att.jsonl"))
    records = [json.loads(line) for line in (tmp_path / "att.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [t["alignment"] for t in answer["translations"]] == records
    shown = answer["translations"][0]["alignment"]
    assert len(shown["attention"]) == len(shown["target"]) and len(shown["attention"][0]) == len(shown["source"])


def test_models_health_and_the_page(client, checkpoints) -> None:
    models = client.get("/v1/models").json()
    assert [m["name"] for m in models["models"]] == ["de-en", "plain"]
    first = models["models"][0]
    assert (first["source_language"], first["target_language"], first["attention"]) == ("de", "en", True)
    assert first["checkpoints"] == [checkpoints["de-en"].name] and first["parameters"] > 0
    assert first["decode"]["beam"] == 3 and (first["dtype"], first["device"]) == ("fp32", "cpu")
    assert models["models"][1]["attention"] is False
    assert models["limits"] == {"max_sentences": 8, "max_body_bytes": 20_000, "max_line_subwords": 1024}
    assert client.get("/health").json() == {"status": "ok", "models": ["de-en", "plain"]}
    page = client.get("/")
    assert page.status_code == 200 and 'id="source"' in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    assert "//" not in "".join(line.split("//")[0] for line in page.text.splitlines() if "src=" in line
                               or "href=" in line)  # nothing from another host: the page works offline
    assert "/v1/translate" in client.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_sentences_and_searches(checkpoints) -> None:
    with make_client(checkpoints) as client:
        translate(client, text=LINES)
        translate(client, text=LINES[:2], model="plain")
        translate(client, text="x", beam=0)
        text = client.get("/metrics").text
    assert 'nmt_requests_total{endpoint="/v1/translate",status="200"} 2.0' in text
    assert 'nmt_requests_total{endpoint="/v1/translate",status="422"} 1.0' in text
    assert f'nmt_sentences_total{{model="de-en"}} {len(LINES)}.0' in text
    assert 'nmt_sentences_total{model="plain"} 2.0' in text
    assert 'nmt_batch_sentences_count{model="de-en"} 1.0' in text
    assert 'nmt_queue_sentences{model="de-en"} 0.0' in text
    assert 'nmt_request_seconds_count{endpoint="/v1/translate"} 3.0' in text


# ----------------------------------------------------------------------------------------------- bad requests

JSON = {"content-type": "application/json"}
BAD_REQUESTS = {
    # case: (body bytes, headers, status, fragments of the message)
    "body over max_body_bytes": (b'{"text": "' + b"a" * 30_000 + b'"}', JSON, 413, ["20000 bytes", "max_body_bytes"]),
    "more sentences than max_sentences": (json.dumps({"text": ["a"] * 9}).encode(), JSON, 413,
                                          ["9 sentences", "8", "max_sentences"]),
    "a line over the subword limit": (json.dumps({"text": ["a", LONG_LINE]}).encode(), JSON, 413,
                                      ["line 1", "1024", "max_line_subwords"]),
    "malformed JSON": (b'{"text": "a",', JSON, 422, ["not valid JSON"]),
    "a body that is not an object": (b'["a"]', JSON, 422, ["JSON object"]),
    "no JSON content type": (b"text=a", {"content-type": "application/x-www-form-urlencoded"}, 422,
                             ["JSON object", "application/json"]),
    "text of the wrong type": (b'{"text": 5}', JSON, 422, ["text", "string or a list of strings"]),
    "a sentence of the wrong type": (b'{"text": ["a", 5]}', JSON, 422, ["text.1", "valid string"]),
    "beam as a string": (b'{"text": "a", "beam": "5"}', JSON, 422, ["beam", "integer"]),
    "alignments as a string": (b'{"text": "a", "alignments": "yes"}', JSON, 422, ["alignments", "boolean"]),
    "an unknown field": (b'{"text": "a", "beem": 5}', JSON, 422, ["beem", "unknown field", "beam"]),
    "no text": (b'{"beam": 5}', JSON, 422, ["text", "required"]),
    "beam out of range": (b'{"text": "a", "beam": 0}', JSON, 422, ["beam must be between 1 and 256, got 0"]),
    "nbest over the beam given": (b'{"text": "a", "beam": 2, "nbest": 5}', JSON, 422, ["nbest 5", "beam"]),
    "a lone surrogate": (b'{"text": "a\\ud800"}', JSON, 422, ["lone surrogate"]),
    "invalid UTF-8": (b'{"text": "\xff\xfe"}', JSON, 400, ["not valid UTF-8", "byte 10"]),
    "an unknown model": (b'{"text": "a", "model": "fr-en"}', JSON, 404, ["fr-en", "de-en, plain"]),
    "alignments from a model without attention": (b'{"text": "a", "model": "plain", "alignments": true}', JSON,
                                                  422, ["alignments need a model with attention", "plain"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_its_status_and_a_json_error_and_the_next_request_is_served(client, reference,
                                                                                        case: str) -> None:
    body, headers, status, fragments = BAD_REQUESTS[case]
    response = client.post("/v1/translate", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    assert "\n" not in error["message"]
    good = translate(client, text=LINES[:2])
    assert good.status_code == 200 and [t["text"] for t in good.json()["translations"]] == reference()[:2]


def test_a_body_over_the_limit_without_a_length_is_refused_while_read(client) -> None:
    chunks = (b'{"text": "' + b"a" * 5_000 if i == 0 else b"a" * 5_000 for i in range(10))
    response = client.post("/v1/translate", content=chunks, headers=JSON)  # chunked: no content-length
    assert response.status_code == 413 and "max_body_bytes" in response.json()["error"]["message"]
    assert translate(client, text="a").status_code == 200


def test_unknown_routes_and_methods_get_json_errors(client) -> None:
    assert client.get("/v2/translate").json() == {"error": {"status": 404, "message": "Not Found"}}
    wrong_method = client.get("/v1/translate")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["status"] == 405


def test_the_api_key_guards_every_v1_route_and_only_them(checkpoints) -> None:
    key = "s3cret-key"
    with make_client(checkpoints, api_key=key) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": key},
                        {"authorization": f"Basic {key}"}):
            for response in (client.post("/v1/translate", json={"text": "a"}, headers=headers),
                             client.get("/v1/models", headers=headers)):
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"] == "Bearer"
                assert "Authorization: Bearer" in response.json()["error"]["message"]
        good = {"authorization": f"Bearer {key}"}
        assert client.post("/v1/translate", json={"text": "a"}, headers=good).status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_cors_is_off_unless_an_origin_is_named(client, checkpoints) -> None:
    origin = {"origin": "https://example.org"}
    assert "access-control-allow-origin" not in translate(client, text="a").headers
    assert "access-control-allow-origin" not in client.post("/v1/translate", json={"text": "a"},
                                                            headers=origin).headers
    with make_client(checkpoints, cors_origins=("https://example.org",)) as cors:
        allowed = cors.post("/v1/translate", json={"text": "a"}, headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = cors.post("/v1/translate", json={"text": "a"}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = cors.options("/v1/translate", headers={**origin, "access-control-request-method": "POST",
                                                          "access-control-request-headers": "content-type"})
        assert preflight.status_code == 200


# ----------------------------------------------------------------------------------------------- 503 and 504


class HeldSearch:
    """Holds the de-en worker inside its next search until released: what a slow model looks like."""

    def __init__(self, client: TestClient, monkeypatch: pytest.MonkeyPatch):
        served = client.app.state.service.models["de-en"]
        self.batcher = served.batcher
        self.entered, self.release, self.done = threading.Event(), threading.Event(), threading.Event()
        search = served.translator.translate_encoded

        def held(*args, **kwargs):
            if callable(args[0]):  # a stream's step: the search is the first argument
                search_now, args = args[0], args[1:]
            else:
                search_now = search
            self.entered.set()
            assert self.release.wait(WAIT_S)
            try:
                return search_now(*args, **kwargs)
            finally:
                self.done.set()

        monkeypatch.setattr(served.translator, "translate_encoded", held)
        make_stream = served.translator.stream

        def held_stream(*args, **kwargs):  # requests that stream are held at their stream's first step
            stream = make_stream(*args, **kwargs)
            stream.step = functools.partial(held, stream.step) if not self.entered.is_set() else stream.step
            return stream

        monkeypatch.setattr(served.translator, "stream", held_stream)


def in_thread(function: Callable[[], object]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    return thread, result


def test_a_full_queue_answers_503_with_retry_after_and_recovers(checkpoints, reference, monkeypatch) -> None:
    with make_client(checkpoints, limits=BatchLimits(max_queue=2, max_wait=0.0), max_sentences=2) as client:
        held = HeldSearch(client, monkeypatch)
        first, first_result = in_thread(lambda: translate(client, text=LINES[0]))
        assert held.entered.wait(WAIT_S)
        queued, queued_result = in_thread(lambda: translate(client, text=LINES[1:3]))
        deadline = time.monotonic() + WAIT_S
        while held.batcher.queued_sentences < 2:
            assert time.monotonic() < deadline, "the second request never reached the queue"
            time.sleep(0.001)
        refused = translate(client, text=LINES[4])
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"]["message"]
        held.release.set()
        first.join(WAIT_S)
        queued.join(WAIT_S)
        assert [t["text"] for t in first_result[0].json()["translations"]] == reference()[:1]
        assert [t["text"] for t in queued_result[0].json()["translations"]] == reference()[1:3]
        assert [t["text"] for t in translate(client, text=LINES[4]).json()["translations"]] == reference()[4:5]


def test_a_request_not_served_within_the_timeout_gets_504_and_the_server_goes_on(checkpoints, reference,
                                                                                  monkeypatch) -> None:
    with make_client(checkpoints, timeout=1.0) as client:
        held = HeldSearch(client, monkeypatch)
        slow = translate(client, text=LINES[0])  # held: its search cannot finish within the second
        assert slow.status_code == 504 and "timeout of 1 s" in slow.json()["error"]["message"]
        queued_then_dropped = translate(client, text=LINES[1])  # still waiting behind the held search
        assert queued_then_dropped.status_code == 504
        held.release.set()
        assert held.done.wait(WAIT_S)
        again = translate(client, text=LINES[:3])
        assert again.status_code == 200 and [t["text"] for t in again.json()["translations"]] == reference()[:3]
        assert held.batcher.queued_sentences == 0


def test_a_failed_search_is_a_500_and_the_next_request_is_served(checkpoints, reference, monkeypatch) -> None:
    with make_client(checkpoints, raise_server_exceptions=False) as client:
        translator = client.app.state.service.models["de-en"].translator
        search = translator.translate_encoded
        stream = translator.stream
        monkeypatch.setattr(translator, "translate_encoded", lambda *a, **k: 1 / 0)
        monkeypatch.setattr(translator, "stream", lambda *a, **k: 1 / 0)
        failed = translate(client, text=LINES[0])
        assert failed.status_code == 500 and failed.json()["error"]["status"] == 500
        monkeypatch.setattr(translator, "translate_encoded", search)
        monkeypatch.setattr(translator, "stream", stream)
        again = translate(client, text=LINES[0])
        assert [t["text"] for t in again.json()["translations"]] == reference()[:1]


# ----------------------------------------------------------------------------------------------- settings


def test_model_specs_and_settings_are_checked_naming_the_option(checkpoints) -> None:
    assert parse_model_spec("a.pt") == (None, "a.pt")
    assert parse_model_spec("de-en.v2=path/a.pt") == ("de-en.v2", "path/a.pt")
    with pytest.raises(NMTError, match="a model name is letters"):
        parse_model_spec("bad name=a.pt")
    with pytest.raises(NMTError, match="two models are named de-en"):
        load_models([str(checkpoints["de-en"])] * 2, ServeSettings(), "cpu", "fp32")
    for settings, option in ((ServeSettings(port=70000), "--port"), (ServeSettings(timeout=0), "--timeout"),
                             (ServeSettings(max_sentences=10, limits=BatchLimits(max_queue=5)), "--max-sentences"),
                             (ServeSettings(limits=BatchLimits(max_wait=float("nan"))), "--max-wait-ms"),
                             (ServeSettings(api_key=" "), "--api-key")):
        with pytest.raises(NMTError, match=option):
            settings.check()


# ----------------------------------------------------------------------------------------------- terminology


@pytest.fixture(scope="module")
def steered(checkpoints: dict[str, Path]) -> Iterator[tuple[TestClient, Glossary]]:
    """A server with one glossary: the first word of LINES[1] must come out as "zuzu"."""
    glossary = Glossary.from_pairs([(LINES[1].split()[0], "zuzu")])
    settings = ServeSettings()
    metrics = Metrics(ENDPOINTS)
    service = Service(load_models([str(checkpoints["de-en"])], settings, "cpu", "fp32", metrics), settings,
                      {"terms": glossary})
    with TestClient(create_app(service, metrics)) as client:
        yield client, glossary


def test_constraints_prefixes_and_glossaries_answer_as_the_python_api(checkpoints, steered) -> None:
    client, glossary = steered
    translator = Translator.load(checkpoints["de-en"], device="cpu", dtype="fp32")
    constraints = [["kalo"], None, [], ["nu"], None, ["mi zu"]]
    prefixes = [None, "so ve", None, "", None, None]
    response = translate(client, text=LINES, constraints=constraints, prefix=prefixes, glossary="terms")
    assert response.status_code == 200, response.text
    expected = translator.translate_nbest(LINES, constraints=constraints, prefix=prefixes, glossary=glossary)
    got = response.json()["translations"]
    assert [t["text"] for t in got] == [hyps[0].text for hyps in expected]
    assert [t.get("unmet", []) for t in got] == [hyps[0].unmet for hyps in expected]
    assert "zuzu" in got[1]["text"] and got[1]["text"].startswith("so ve")
    single = translate(client, text=LINES[0], constraints=["kalo"], prefix="ta").json()["translations"][0]
    assert single["text"] == translator.translate(LINES[0], constraints=["kalo"], prefix="ta")
    assert client.get("/v1/models").json()["glossaries"] == ["terms"]


@pytest.mark.parametrize("body, status, fragment", [
    (dict(text=LINES[:2], constraints=[["kalo"]]), 422, "constraints: expected a list with one entry per sentence"),
    (dict(text=LINES[0], constraints=[["kalo"]]), 422, "constraints: for a single text, a list of phrases"),
    (dict(text=LINES[:2], prefix="ta"), 422, "prefix: for a list of texts, a list with one entry per sentence"),
    (dict(text=LINES[:2], constraints=[["Ω"], None]), 422, "line 0: constraint 1: the constraint 'Ω' has "),
    (dict(text=LINES[0], glossary="nope"), 404, "unknown glossary 'nope'; this server has terms"),
    (dict(text=LINES[0], constraints="kalo"), 422, "constraints"),
])
def test_bad_terminology_requests_are_refused_and_the_next_is_served(steered, body, status, fragment) -> None:
    client, _ = steered
    response = translate(client, **body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert translate(client, text=LINES[0]).status_code == 200


def test_an_int8_server_answers_as_the_int8_translator(checkpoints) -> None:
    settings = ServeSettings()
    metrics = Metrics(ENDPOINTS)
    service = Service(load_models([str(checkpoints["de-en"])], settings, "cpu", "int8", metrics), settings)
    with TestClient(create_app(service, metrics)) as client:
        assert client.get("/v1/models").json()["models"][0]["dtype"] == "int8"
        response = translate(client, text=LINES)
        assert response.status_code == 200, response.text
        expected = Translator.load(checkpoints["de-en"], device="cpu", dtype="int8").translate(LINES)
        assert [t["text"] for t in response.json()["translations"]] == expected
