"""`nmt serve` as a real process (uvicorn on a free loopback port): every endpoint, 32 concurrent clients each
getting exactly their own translations (equal to `nmt translate`'s) from shared searches, SIGTERM under load
losing no answered request, and the command's own user errors."""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from nmt.serve.server import bind
from serve_fixtures import Server, call, running_server, translate_command
from translation_fixtures import make_checkpoint, synthetic_sentences

POOL = synthetic_sentences(24, seed=31) + [""]
WAIT_S = 60


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_process") / "model.pt", seed=8)


@pytest.fixture(scope="module")
def references(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int | None, list[str]]:
    """`nmt translate`'s line for each POOL sentence: with the checkpoint's beam (key None) and with beam 1, in the
    dtype `nmt serve` picks by default (bf16 on a CPU with native bf16, where a sentence's states once depended on
    its batch: `nmt.model.encoder`)."""
    folder = tmp_path_factory.mktemp("references")
    return {None: translate_command(checkpoint, POOL, folder / "default", dtype="auto"),
            1: translate_command(checkpoint, POOL, folder / "greedy", "--beam", "1", dtype="auto")}


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    # A 50 ms wait makes the concurrent requests meet in the queue even on a loaded machine.
    with running_server(["-c", str(checkpoint), "--max-wait-ms", "50"],
                        tmp_path_factory.mktemp("server") / "serve.log") as server:
        yield server


class Client:
    """One keep-alive connection, as a browser or a script would hold it."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT_S)

    def translate(self, body: dict) -> tuple[int, dict]:
        self.connection.request("POST", "/v1/translate", json.dumps(body), {"content-type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.connection.close()


def test_every_endpoint_through_a_real_uvicorn_process(server: Server, references) -> None:
    answer = call(server.url + "/v1/translate", {"text": POOL[:3]})
    assert answer.status == 200 and [t["text"] for t in answer.json()["translations"]] == references[None][:3]
    assert call(server.url + "/health").json() == {"status": "ok", "models": ["de-en"]}
    assert call(server.url + "/v1/models").json()["models"][0]["name"] == "de-en"
    metrics = call(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'nmt_requests_total{endpoint="/v1/translate",status="200"}' in metrics.body.decode()
    page = call(server.url + "/")
    assert page.status == 200 and b'<textarea id="source"' in page.body
    assert call(server.url + "/static/app.js").status == 200
    assert call(server.url + "/docs").status == 200
    assert "/v1/translate" in call(server.url + "/openapi.json").json()["paths"]
    assert call(server.url + "/v1/translate", b"{oops").status == 422
    assert call(server.url + "/v1/translate", {"text": "a"}).status == 200  # still serving


def test_answers_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(server: Server) -> None:
    """With Nagle's algorithm on, each answer's body waited for the client's delayed ACK of its head: 40 ms
    a request on Linux, whatever the work. The listening socket turns it off for every connection."""
    sock = bind("127.0.0.1", 0)
    with sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) and sock.proto == socket.IPPROTO_TCP
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT_S)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        connection.request("GET", "/health")
        connection.getresponse().read()
        times.append(time.perf_counter() - start)
    connection.close()
    assert sorted(times)[10] < 0.030, times  # the median; 0.040 and more with the delayed ACKs


def test_32_concurrent_clients_each_get_exactly_their_own_translations(server: Server, references) -> None:
    clients, requests_each = 32, 4
    start = threading.Barrier(clients, timeout=WAIT_S)
    failures: list[str] = []
    before = _batch_totals(server)

    def run(k: int) -> None:
        rng = random.Random(k)
        client = Client(server.url)
        try:
            start.wait()
            for r in range(requests_each):
                lines = rng.sample(range(len(POOL)), rng.randint(1, 3))
                beam = 1 if (k + r) % 2 else None  # two option groups queued at once
                body = {"text": [POOL[i] for i in lines], **({"beam": beam} if beam else {})}
                status, answer = client.translate(body)
                got = [t["text"] for t in answer.get("translations", [])]
                expected = [references[beam][i] for i in lines]
                if status != 200 or got != expected:
                    failures.append(f"client {k} request {r}: {status} {got} != {expected}")
        except Exception as err:  # noqa: BLE001 (reported below, with the client's number)
            failures.append(f"client {k}: {err!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    requests, searches = (after - first for after, first in zip(_batch_totals(server), before))
    assert requests == clients * requests_each
    assert searches < requests  # requests shared searches


def _batch_totals(server: Server) -> tuple[float, float]:
    """(requests, searches) so far, from the nmt_batch_requests histogram."""
    text = call(server.url + "/metrics").body.decode()
    found = [re.search(rf'^nmt_batch_requests_{name}{{model="de-en"}} (\S+)$', text, re.M) for name in ("sum", "count")]
    return tuple(float(match.group(1)) if match else 0.0 for match in found)  # no line before the first search


def test_sigterm_during_load_loses_no_answered_request(checkpoint: Path, references, tmp_path: Path) -> None:
    """Clients keep sending until the server stops. Every answer that the server sent (its access log) reached
    its client complete and correct, some were answered after the signal (they were in progress), and the
    process ended with 0."""
    answered: list[float] = []  # when each correct 200 arrived
    failures: list[str] = []
    stop_clients = threading.Event()
    with running_server(["-c", str(checkpoint), "--max-wait-ms", "20"], tmp_path / "serve.log") as server:

        def run(k: int) -> None:
            rng, client = random.Random(k), Client(server.url)
            deadline = time.monotonic() + WAIT_S
            for _ in range(500):
                if stop_clients.is_set() or time.monotonic() > deadline:
                    break
                lines = rng.sample(range(len(POOL)), 3)
                try:
                    status, answer = client.translate({"text": [POOL[i] for i in lines]})
                except (OSError, http.client.HTTPException):
                    break  # refused or closed before an answer: the server had stopped taking requests
                got = [t["text"] for t in answer.get("translations", [])]
                if status != 200 or got != [references[None][i] for i in lines]:
                    failures.append(f"client {k}: {status} {answer}")
                    break
                answered.append(time.monotonic())
            client.close()

        threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_S
        while len(answered) < 24:
            assert time.monotonic() < deadline and not failures, failures or "too few answers"
            time.sleep(0.01)
        signalled = time.monotonic()
        code = server.stop(timeout=WAIT_S)
        stop_clients.set()
        for thread in threads:
            thread.join(WAIT_S)
        log = server.log_text()
    assert code == 0, log
    assert failures == []
    sent = len(re.findall(r'"POST /v1/translate HTTP/1.1" 200', log))
    assert sent == len(answered), f"the server answered {sent} requests, the clients got {len(answered)}"
    assert any(t > signalled for t in answered), "no request was in progress at the signal"
    assert "stopped by SIGTERM" in log


def test_a_port_in_use_or_a_bad_checkpoint_is_one_line(run_cli, user_error, checkpoint: Path, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "-c", checkpoint, "--port", port)
    user_error(result, f"cannot listen on 127.0.0.1:{port}")
    user_error(run_cli("serve", "-c", tmp_path / "missing.pt", "--port", "0"), "checkpoint not found")
    user_error(run_cli("serve", "-c", checkpoint, "--port", "0", "--max-sentences", "9000"), "--max-sentences")
