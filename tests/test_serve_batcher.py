"""nmt.serve.batcher: requests queued together come back exactly as translated alone, only requests with equal
options share a search, the budget and the queue bound hold, a request given up is never translated, and stop
finishes what is queued."""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.checkpoint import TrainedModel, load_trained_model
from nmt.config import DecodeConfig
from nmt.serve.batcher import Batcher, Job, QueueFull, Stopped
from nmt.serve.settings import BatchLimits
from nmt.translator import Translation, Translator
from translation_fixtures import make_checkpoint, synthetic_sentences

POOL = synthetic_sentences(10, seed=11) + [""]
CPU = torch.device("cpu")
WAIT_S = 30  # the deadline of every wait for a worker: never reached when the code is right


@functools.lru_cache(maxsize=1)
def trained() -> TrainedModel:
    with tempfile.TemporaryDirectory() as tmp:
        return load_trained_model(make_checkpoint(Path(tmp) / "model.pt", seed=4))


def real_translator(**options: object) -> Translator:
    decode = DecodeConfig(beam=3, max_len_a=1.0, max_len_b=3, batch_tokens=4096)
    return Translator([trained()], decode, CPU, torch.float32).with_options(**options)


class Recorder:
    """A BatchObserver that keeps every search's (requests, sentences)."""

    def __init__(self) -> None:
        self.searches: list[tuple[int, int]] = []
        self.queue_lengths: list[int] = []

    def queued(self, model: str, sentences: int) -> None:
        self.queue_lengths.append(sentences)

    def searched(self, model: str, requests: int, sentences: int, seconds: float) -> None:
        self.searches.append((requests, sentences))


class FakeTranslator:
    """Stands in for a Translator where only the grouping matters: `decode` decides who may share a search,
    and each search can be held until the test lets it go."""

    streams = False  # every search takes its requests at once (test_stream.py and below test streaming)

    def __init__(self, beam: int = 5, hold: threading.Event | None = None, fail: bool = False):
        self.decode = DecodeConfig(beam=beam)
        self.hold, self.fail = hold, fail
        self.entered = threading.Event()
        self.calls: list[int] = []  # sentences per search

    def translate_encoded(self, sources: list, with_attention: bool = False,
                          targets: list | None = None) -> list[list[Translation]]:
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT_S)
        if self.fail:
            raise RuntimeError("search failed")
        self.calls.append(len(sources))
        return [[Translation(list(ids or []), 0.0, 0.0, text=str(self.decode.beam))] for ids in sources]


@pytest.fixture
def batcher_factory():
    made: list[Batcher] = []

    def make(limits: BatchLimits = BatchLimits(), observer: Recorder | None = None) -> Batcher:
        batcher = Batcher("test", limits, observer)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop(WAIT_S)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(st.sampled_from(POOL), min_size=1, max_size=4), st.sampled_from([1, 3]),
                          st.booleans()), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=200))
def test_requests_queued_together_get_what_they_would_get_alone(batcher_factory, requests, budget: int) -> None:
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    batcher = batcher_factory(BatchLimits(max_batch_tokens=budget, max_wait=0.0))
    batcher.start()
    blocked = batcher.submit(blocker, [[5]], False)  # keeps the worker busy while the requests queue up
    assert blocker.entered.wait(WAIT_S)
    futures = []
    for lines, beam, attention in requests:
        translator = real_translator(beam=beam)
        futures.append(batcher.submit(translator, translator.encode(lines), attention))
    hold.set()
    blocked.result(WAIT_S)
    for (lines, beam, attention), future in zip(requests, futures):
        alone = real_translator(beam=beam).translate_lines(lines, with_attention=attention)
        got = future.result(WAIT_S)
        assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in alone]
        assert [hyps[0].score for hyps in got] == pytest.approx([hyps[0].score for hyps in alone], abs=1e-5)
        assert [hyps[0].attention is not None for hyps in got] == [attention and bool(line.strip())
                                                                   for line in lines]


def submit_while_held(batcher: Batcher, jobs: list[tuple[FakeTranslator, int]]) -> list[Future]:
    """Hold the worker in a search, queue `jobs` (translator, sentences of 3 subwords), then let it go."""
    hold = threading.Event()
    blocker = FakeTranslator(beam=99, hold=hold)
    batcher.start()
    first = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    futures = [batcher.submit(translator, [[5, 6, 7]] * n, False) for translator, n in jobs]
    hold.set()
    first.result(WAIT_S)
    return futures


def test_only_requests_with_equal_options_share_a_search(batcher_factory) -> None:
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_wait=0.0), recorder)
    beam2, beam3 = FakeTranslator(beam=2), FakeTranslator(beam=3)
    futures = submit_while_held(batcher, [(beam2, 1), (beam3, 2), (beam2, 3), (beam3, 4), (beam2, 5)])
    results = [f.result(WAIT_S) for f in futures]
    # Two searches after the held one: every beam-2 request in one, every beam-3 request in the other.
    assert recorder.searches[1:] == [(3, 9), (2, 6)]
    assert beam2.calls == [9] and beam3.calls == [6]
    assert [[hyps[0].text for hyps in r] for r in results] == [["2"], ["3"] * 2, ["2"] * 3, ["3"] * 4, ["2"] * 5]


@pytest.mark.parametrize("budget", [4, 8, 12, 20, 1000])
def test_a_search_takes_requests_within_the_token_budget_in_queue_order(batcher_factory, budget: int) -> None:
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_batch_tokens=budget, max_wait=0.0), recorder)
    sizes = [1, 2, 1, 3, 1, 1]  # sentences of 3 subwords: 4 tokens each with EOS
    futures = submit_while_held(batcher, [(FakeTranslator(), n) for n in sizes])
    for future in futures:
        future.result(WAIT_S)
    searches = recorder.searches[1:]
    assert sum(s for _, s in searches) == sum(sizes)
    assert sum(r for r, _ in searches) == len(sizes)
    for requests, sentences in searches:
        assert requests == 1 or sentences * 4 <= budget  # only a lone request may exceed the budget
    # Queue order: the searches' requests are consecutive runs of `sizes`.
    runs, start = [], 0
    for requests, _ in searches:
        runs.append(sum(sizes[start:start + requests]))
        start += requests
    assert runs == [s for _, s in searches]


def test_max_batch_requests_one_is_one_request_per_search(batcher_factory) -> None:
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_batch_requests=1, max_wait=0.0), recorder)
    futures = submit_while_held(batcher, [(FakeTranslator(), 2) for _ in range(5)])
    for future in futures:
        future.result(WAIT_S)
    assert recorder.searches[1:] == [(1, 2)] * 5


def test_a_full_group_does_not_wait_for_max_wait(batcher_factory) -> None:
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_batch_requests=2, max_wait=3600.0), recorder)
    batcher.start()
    translator = FakeTranslator()
    first = batcher.submit(translator, [[5]], False)
    second = batcher.submit(translator, [[6]], False)
    first.result(WAIT_S)  # an hour's wait would fail here: two requests fill the group
    second.result(WAIT_S)
    assert recorder.searches == [(2, 2)]


def test_a_lone_request_waits_max_wait_for_company_then_goes_alone(batcher_factory) -> None:
    max_wait = 0.3
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_wait=max_wait), recorder)
    batcher.start()
    start = time.monotonic()
    batcher.submit(FakeTranslator(), [[5]], False).result(WAIT_S)
    assert time.monotonic() - start >= max_wait
    assert recorder.searches == [(1, 1)]


def test_after_a_search_the_worker_waits_for_its_clients_to_come_back(batcher_factory) -> None:
    """A request that queued during a search still waits up to max_wait after it, so that the requests of
    the clients just answered join it: closed-loop clients then share one search instead of two."""
    max_wait = 0.5
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_batch_requests=2, max_wait=max_wait), recorder)
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    batcher.start()
    running = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    translator = FakeTranslator()
    waited = batcher.submit(translator, [[6]], False)
    queued_at = time.monotonic()
    wait_until(lambda: time.monotonic() > queued_at + max_wait, "the queued request is older than max_wait")
    hold.set()
    running.result(WAIT_S)
    returning = batcher.submit(translator, [[7]], False)  # a client of the search that just ended comes back
    waited.result(WAIT_S)
    returning.result(WAIT_S)
    assert recorder.searches[1:] == [(2, 2)]


def test_the_clients_of_a_search_coming_back_one_by_one_share_the_next_one(batcher_factory) -> None:
    """After a search of 4 requests, the worker waits (up to a tenth of that search's time) for 4 new ones,
    even when they come back further apart than max_wait: they join the request that queued during it."""
    max_wait, gap = 0.05, 0.07
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_batch_requests=5, max_wait=max_wait), recorder)
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    batcher.start()
    answered = [batcher.submit(blocker, [[5]], False) for _ in range(4)]
    assert blocker.entered.wait(WAIT_S)
    translator = FakeTranslator()
    futures = [batcher.submit(translator, [[6]], False)]
    held_from = time.monotonic()
    wait_until(lambda: time.monotonic() > held_from + 3.0, "the search has taken 3 s (a tenth: 0.3 s)")
    hold.set()
    for future in answered:
        future.result(WAIT_S)
    for i in range(4):
        if i:
            previous = time.monotonic()
            wait_until(lambda: time.monotonic() > previous + gap, "the next client comes back")
        futures.append(batcher.submit(translator, [[7 + i]], False))
    for future in futures:
        future.result(WAIT_S)
    assert recorder.searches == [(4, 4), (5, 5)]


def test_a_full_queue_refuses_and_accepts_again_once_it_drains(batcher_factory) -> None:
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    batcher = batcher_factory(BatchLimits(max_queue=3, max_wait=0.0))
    batcher.start()
    running = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    queued = batcher.submit(blocker, [[5], [6], [7]], False)
    assert batcher.queued_sentences == 3
    with pytest.raises(QueueFull, match="3 sentences are waiting"):
        batcher.submit(blocker, [[5]], False)
    hold.set()
    running.result(WAIT_S)
    queued.result(WAIT_S)
    assert batcher.queued_sentences == 0
    assert len(batcher.submit(blocker, [[5], [6], [7]], False).result(WAIT_S)) == 3


def test_a_request_given_up_before_its_search_is_never_translated(batcher_factory) -> None:
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    other = FakeTranslator()
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_wait=0.0), recorder)
    batcher.start()
    running = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    given_up = batcher.submit(other, [[5], [6]], False)
    kept = batcher.submit(other, [[7]], False)
    batcher.cancel(given_up)
    assert given_up.cancelled() and batcher.queued_sentences == 1
    hold.set()
    running.result(WAIT_S)
    assert len(kept.result(WAIT_S)) == 1
    assert other.calls == [1]


def test_a_failed_search_fails_its_requests_and_the_worker_goes_on(batcher_factory) -> None:
    batcher = batcher_factory(BatchLimits(max_wait=0.0))
    batcher.start()
    with pytest.raises(RuntimeError, match="search failed"):
        batcher.submit(FakeTranslator(fail=True), [[5]], False).result(WAIT_S)
    assert len(batcher.submit(FakeTranslator(), [[5], [6]], False).result(WAIT_S)) == 2


def test_stop_finishes_the_queued_requests_then_refuses(batcher_factory) -> None:
    hold = threading.Event()
    blocker = FakeTranslator(hold=hold)
    batcher = batcher_factory(BatchLimits(max_wait=0.0))
    batcher.start()
    running = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    queued = [batcher.submit(FakeTranslator(beam=b), [[5]] * b, False) for b in (1, 2, 3)]
    stopper = threading.Thread(target=batcher.stop, args=(WAIT_S,))
    stopper.start()
    wait_until(lambda: batcher._stopping, "stop() has begun")
    with pytest.raises(Stopped):
        batcher.submit(blocker, [[5]], False)
    hold.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert running.result(0) and [len(f.result(0)) for f in queued] == [1, 2, 3]


def test_empty_lines_cost_no_tokens() -> None:
    assert Job(FakeTranslator(), [None, [], [4, 5]], False).tokens == 3


def test_with_two_searches_two_run_at_once_and_every_request_gets_its_own_lines(batcher_factory) -> None:
    hold = threading.Event()
    first, second = FakeTranslator(beam=1, hold=hold), FakeTranslator(beam=2, hold=hold)
    batcher = batcher_factory(BatchLimits(max_wait=0.0, searches=2))
    batcher.start()
    a = batcher.submit(first, [[5]], False)
    assert first.entered.wait(WAIT_S)
    b = batcher.submit(second, [[6, 7]], False)  # another worker takes it while the first search is held
    assert second.entered.wait(WAIT_S)
    hold.set()
    assert [h.text for hyps in a.result(WAIT_S) for h in hyps] == ["1"]
    assert [h.tokens for hyps in b.result(WAIT_S) for h in hyps] == [[6, 7]]
    translator = real_translator()
    lines = [[line] for line in POOL]
    futures = [batcher.submit(translator, translator.encode(line), False) for line in lines]
    for line, future in zip(lines, futures):
        assert [h.tokens for h in future.result(WAIT_S)[0]] == [h.tokens for h in translator.translate_lines(line)[0]]


def test_idle_workers_share_the_queued_requests_between_them(batcher_factory) -> None:
    recorder = Recorder()
    batcher = batcher_factory(BatchLimits(max_wait=0.3, searches=2), recorder)
    batcher.start()
    wait_until(lambda: batcher._idle == 2, "both workers wait")
    hold = threading.Event()
    translator = FakeTranslator(hold=hold)
    futures = [batcher.submit(translator, [[5, 6]], False) for _ in range(7)]  # within max_wait of the first
    wait_until(lambda: batcher._idle == 0, "both workers search")  # held there: neither comes back for more
    hold.set()
    for future in futures:
        future.result(WAIT_S)
    assert sorted(recorder.searches) == [(3, 3), (4, 4)]


def test_a_worker_whose_sibling_is_busy_takes_the_whole_group(batcher_factory) -> None:
    recorder = Recorder()
    hold = threading.Event()
    blocker = FakeTranslator(beam=99, hold=hold)
    batcher = batcher_factory(BatchLimits(max_wait=0.3, searches=2), recorder)
    batcher.start()
    held = batcher.submit(blocker, [[5]], False)
    assert blocker.entered.wait(WAIT_S)
    translator = FakeTranslator()
    futures = [batcher.submit(translator, [[5, 6]], False) for _ in range(7)]
    for future in futures:
        future.result(WAIT_S)
    hold.set()
    held.result(WAIT_S)
    assert recorder.searches == [(7, 7), (1, 1)]


def hold_first_step(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event,
                                                                                      threading.Event]:
    """The translator's next stream stops before its first step until `release` is set; `entered` tells it is
    there."""
    entered, release = threading.Event(), threading.Event()
    make = translator.stream

    def stream(*args, **kwargs):
        made = make(*args, **kwargs)
        step = made.step

        def held_step():
            entered.set()
            assert release.wait(WAIT_S)
            return step()

        made.step = held_step
        return made

    monkeypatch.setattr(translator, "stream", stream)
    return entered, release


def test_requests_join_a_running_stream_and_get_what_they_get_alone(batcher_factory, monkeypatch) -> None:
    recorder = Recorder()
    translator = real_translator(beam=3)
    entered, release = hold_first_step(translator, monkeypatch)
    batcher = batcher_factory(BatchLimits(max_wait=0.0), recorder)
    batcher.start()
    lines = [[line] for line in POOL]
    first = batcher.submit(translator, translator.encode(lines[0]), False)
    assert entered.wait(WAIT_S)
    joining = [batcher.submit(translator, translator.encode(line), False) for line in lines[5:]]
    apart = [batcher.submit(translator, translator.encode(line), True) for line in lines[1:5]]
    release.set()
    futures = [first, *apart, *joining]
    for k, (line, future) in enumerate(zip(lines, futures)):
        attention = 1 <= k < 5
        got, alone = future.result(WAIT_S)[0], translator.translate_lines(line, with_attention=attention)[0]
        assert [h.tokens for h in got] == [h.tokens for h in alone] and got[0].text == alone[0].text
        assert got[0].score == pytest.approx(alone[0].score, abs=1e-5)
    # Those with the first one's options joined its stream after its first step, in one more round; the requests
    # that want attention ran in a stream of their own after it ended.
    assert recorder.searches == [(1, 1), (len(lines) - 5, len(lines) - 5), (4, 4)]


def test_a_queued_request_that_cannot_join_stops_the_ones_behind_it_from_joining(batcher_factory,
                                                                                 monkeypatch) -> None:
    recorder = Recorder()
    first, other = real_translator(beam=3), real_translator(beam=2)
    entered, release = hold_first_step(first, monkeypatch)
    batcher = batcher_factory(BatchLimits(max_wait=0.0), recorder)
    batcher.start()
    a = batcher.submit(first, first.encode([POOL[0]]), False)
    assert entered.wait(WAIT_S)
    b = batcher.submit(other, other.encode([POOL[1]]), False)
    c = batcher.submit(first, first.encode([POOL[2]]), False)  # could join a's stream, but b came first
    answered: list[str] = []
    for name, future in zip("abc", (a, b, c)):
        future.add_done_callback(lambda _, name=name: answered.append(name))
    release.set()
    for future in (a, b, c):
        future.result(WAIT_S)
    assert answered == ["a", "b", "c"]  # c did not join a's stream: it waited for b's turn
