"""Batching across requests: a model's worker threads (`searches` of them, 2 by default on a CPU, the threads
split among them) take what is queued and search it together.

Why a worker and a queue rather than a lock per request (OpenNMT-py's server): a search over 32 sentences
costs a CPU little more than a search over one, since the matrix products get rows instead of steps, so
requests that wait a few milliseconds for each other cost about what a file of their lines costs. And a
sentence decodes the same alone or in any batch with the same options (`nmt.translator`), so batching never
changes an answer: a request's lines come back exactly as `nmt translate` writes them.

Two ways to search what is taken:

- **Streaming** (plain beam search, the default decoding; `nmt.stream`): the search runs step by step; after
  each step the requests whose sentences have all ended are answered, and queued requests with the same options
  join it (once they are a quarter of its sentences, or have waited `JOIN_STEPS` steps). A step thus serves
  about as many sentences as there are clients, and nobody waits for another request's longest sentence.
  Measured with `tools/loadtest.py` on the demo model (AVX2-only CPU, 2 searches, one thread each), one run
  each, one after the other, against searching each group whole: 49.4 sentences/s against 39.6 with 32
  clients, 28.6 against 25.5 with 8, 61.9 against 58.2 with 128 (docs/BENCHMARKS.md).
- **A batch at once** (everything else: sampling, beam 1, constraints and prefixes, greedy floor, a
  shortlist): one `Translator.translate_encoded` call for the group, each request answered at its end.

The rules the workers follow:

- Only requests with equal decoding options (and the same wish for attention) share a search. The oldest
  queued request decides what is taken next; the others wait their turn in queue order, and a queued request
  that cannot join a running stream stops those behind it from joining, so that the stream ends and its turn
  comes.
- A search takes queued requests until their source tokens (EOS included) reach `max_batch_tokens` or
  `max_batch_requests` are taken (in a stream: that many in it at a time). It waits for more `max_wait`
  seconds after the oldest one's arrival or after the end of the previous search, whichever is later; and,
  right after a search of k requests, until k new requests have arrived, for at most a tenth of that search's
  time (`max_wait` 0 turns both waits off). Why the second wait: the clients a search answered come back one
  after the other over tens of milliseconds (each answer is written, each new request parsed, in turn), and a
  worker that took only what had queued during its search split closed-loop clients into two groups that
  alternate, each half the size of one search over all of them (measured on the demo model: 16 sentences per
  search with 32 clients, 30 with this wait, and 8 clients went from 7.7 to 12.6 sentences/s). A request is
  never split, so one larger than the budget gets a search of its own.
- With 2 or more workers, those that are waiting share what they take: a worker takes the shortest 1/k of
  its group, k the number of waiting workers (itself included), and the others take the rest at once (two
  searches of 16 sentences on one thread each did 50-57 sentences/s where one of 32 on two threads did 40-49:
  `tools/batch_speed.py`, demo model, AVX2-only CPU). A streaming worker lets newcomers join only while no
  other worker holds fewer sentences.
- The queue holds at most `max_queue` sentences: `submit` raises `QueueFull` beyond that, so memory stays
  bounded however many clients call (the service answers 503 with Retry-After).
- A request whose caller stopped waiting before its search started is dropped, never translated.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from nmt.constraints import Target
from nmt.precision import autocast
from nmt.search import Hypothesis
from nmt.serve.settings import BatchLimits
from nmt.stream import BeamStream
from nmt.tokens import with_eos
from nmt.translator import Source, Translation, Translator

log = logging.getLogger(__name__)

Result = list[list[Translation]]  # per sentence of a request, its n-best translations


JOIN_STEPS = 4  # the most decoder steps a request that may join a running stream waits for company (_joining)


class QueueFull(Exception):
    """The queue holds too many sentences to take a request's: the caller should come back later."""


class Stopped(Exception):
    """The worker is stopping and takes no new request."""


class BatchObserver(Protocol):
    """What the worker reports, for metrics."""

    def queued(self, model: str, sentences: int) -> None: ...

    def searched(self, model: str, requests: int, sentences: int, seconds: float) -> None: ...


@dataclass(eq=False)
class Job:
    """One request's sentences, the translator bound to its options, and where its result goes."""

    translator: Translator
    sources: list[Source]
    with_attention: bool
    targets: list[Target | None] | None = None  # constraints and prefixes, one per sentence (nmt.constraints)
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[Result] = field(default_factory=Future)

    tokens: int = field(init=False)  # source tokens, EOS included: counted once, read at every wake-up
    streams: bool = field(init=False)  # whether its sentences may join a running search (nmt.stream)

    def __post_init__(self) -> None:
        self.tokens = sum(with_eos(len(ids)) for ids in self.sources if ids is not None and len(ids) > 0)
        self.streams = self.translator.streams and (self.targets is None or all(t is None for t in self.targets))

    def joins(self, other: Job) -> bool:
        """Whether this job may share `other`'s search: the same options give the same answers."""
        return self.with_attention == other.with_attention and self.translator.decode == other.translator.decode


@dataclass(eq=False)
class _InFlight:
    """A request whose sentences are in a running stream: its translations so far, and how many are still out."""

    job: Job
    results: Result
    left: int


@dataclass
class _Round:
    """What a stream took in at one admission and the decoder steps until the next: one search, for metrics."""

    requests: int = 0
    sentences: int = 0
    seconds: float = 0.0


@dataclass
class _LastSearch:
    """A worker's last search: when it ended, how long it took, how many requests it answered, and how many
    requests had arrived in all by its end."""

    ended: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    arrived_before: int = 0


class Batcher:
    """The worker thread of one model: `submit` queues a request's encoded sentences and returns a future of
    their translations (`translate_encoded`'s result for those sentences, in their order)."""

    def __init__(self, name: str, limits: BatchLimits, observer: BatchObserver | None = None):
        self.name, self.limits, self.observer = name, limits, observer
        self._queue: deque[Job] = deque()
        self._queued_sentences = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._arrived = 0  # requests queued since start-up
        self._idle = 0  # workers waiting for a search's requests
        self._live = [0] * limits.searches  # sentences in each worker's running stream
        self._threads = [threading.Thread(target=self._run, args=(k,), name=f"nmt-serve-{name}-{k}", daemon=True)
                         for k in range(limits.searches)]

    @property
    def queued_sentences(self) -> int:
        with self._cond:
            return self._queued_sentences

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new request, translate the queued ones, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def submit(self, translator: Translator, sources: list[Source], with_attention: bool,
               targets: list[Target | None] | None = None) -> Future[Result]:
        job = Job(translator, list(sources), with_attention, targets)
        with self._cond:
            if self._stopping:
                raise Stopped(self.name)
            if self._queued_sentences + len(job.sources) > self.limits.max_queue:
                raise QueueFull(f"{self._queued_sentences} sentences are waiting (the queue holds "
                                f"{self.limits.max_queue})")
            self._queue.append(job)
            self._arrived += 1
            self._set_queued(self._queued_sentences + len(job.sources))
            self._cond.notify_all()
        return job.future

    def cancel(self, future: Future[Result]) -> None:
        """The caller stopped waiting: drop its request if no search has taken it yet."""
        with self._cond:
            for job in self._queue:
                if job.future is future:
                    self._queue.remove(job)
                    self._set_queued(self._queued_sentences - len(job.sources))
                    break
        future.cancel()

    # ------------------------------------------------------------------------------------------- the worker

    def _run(self, worker: int) -> None:
        last = _LastSearch()  # this worker's own: each waits for the clients of its own last search
        while (jobs := self._take(last)) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs and jobs[0].streams:  # a group shares its options: all of it streams or none
                self._stream(worker, jobs)
                last = _LastSearch()  # a stream ends when nobody is left to join it: no clients to wait for
                continue
            start = time.monotonic()
            self._translate(jobs)
            with self._cond:
                last.ended = time.monotonic()
                last.seconds, last.requests, last.arrived_before = last.ended - start, len(jobs), self._arrived

    def _take(self, last: _LastSearch) -> list[Job] | None:
        """Wait for the next search's requests; None once stopping with nothing queued."""
        with self._cond:
            self._idle += 1
            try:
                return self._wait_for_group(last)
            finally:
                self._idle -= 1

    def _wait_for_group(self, last: _LastSearch) -> list[Job] | None:
        while True:
            if not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
                continue
            group, full = self._group()
            wait = self._deadline(last) - time.monotonic()
            if full or wait <= 0 or self._stopping:
                # Workers with nothing to do share the group: two searches over half each, one thread each,
                # finish sooner than one over all of it while the other worker waits.
                if self._idle > 1:  # by length: searches over sentences of like lengths end together
                    group = sorted(group, key=lambda job: job.tokens)[:math.ceil(len(group) / self._idle)]
                taken = set(map(id, group))
                self._queue = deque(job for job in self._queue if id(job) not in taken)
                self._set_queued(self._queued_sentences - sum(len(job.sources) for job in group))
                self._cond.notify_all()  # an idle worker takes what is left
                return group
            self._cond.wait(wait)

    def _deadline(self, last: _LastSearch) -> float:
        """When to stop waiting for more requests (see the module docstring), on time.monotonic's clock."""
        first = max(self._queue[0].enqueued, last.ended) + self.limits.max_wait
        if self._arrived - last.arrived_before >= last.requests or self.limits.max_wait == 0:  # 0: never wait
            return first
        return max(first, last.ended + last.seconds / 10)  # its clients are coming back

    def _group(self) -> tuple[list[Job], bool]:
        """The oldest request and the queued ones that may share its search, in queue order, within the
        limits; and whether the group is full (waiting longer would not make it larger)."""
        first = self._queue[0]
        group, tokens = [first], first.tokens
        most = self.limits.max_batch_requests or sys.maxsize
        for job in itertools.islice(self._queue, 1, None):
            if not job.joins(first):
                continue
            if len(group) >= most or tokens + job.tokens > self.limits.max_batch_tokens:
                return group, True
            group.append(job)
            tokens += job.tokens
        return group, len(group) >= most or tokens >= self.limits.max_batch_tokens

    # ------------------------------------------------------------------------------ continuous batching

    def _stream(self, worker: int, jobs: list[Job]) -> None:
        """Run one stream (nmt.stream) from `jobs` until no sentence is left in it: after each decoder step the
        requests whose sentences have all ended are answered, and queued requests with the same options join."""
        unanswered = set(jobs)  # the stream's requests not answered yet (it may run for hours under steady load)
        try:
            self._run_stream(worker, jobs, unanswered)
        except Exception as err:  # the worker must outlive a failed search; each caller gets the error
            log.exception("%s: a streamed search failed", self.name)
            for job in unanswered:
                if not job.future.done():
                    job.future.set_exception(err)
        finally:
            with self._cond:
                self._live[worker] = 0

    def _run_stream(self, worker: int, jobs: list[Job], unanswered: set[Job]) -> None:
        translator = jobs[0].translator
        # One autocast context for the stream's life: autocast keeps its casts of the weights until its outermost
        # context ends, and each step's own context would otherwise cast them all again.
        with autocast(translator.device, translator.dtype):
            self._stream_steps(worker, jobs, unanswered)

    def _stream_steps(self, worker: int, jobs: list[Job], unanswered: set[Job]) -> None:
        first = jobs[0]
        translator = first.translator
        stream = translator.stream(first.with_attention)
        flights: list[_InFlight] = []
        round_ = self._admit(stream, jobs, flights)
        waited = 0  # steps since sentences last joined
        while stream.live:
            start = time.perf_counter()
            ended = stream.step()
            round_.seconds += time.perf_counter() - start
            for (flight, i), hyps in ended:
                flight.results[i] = translator.finish(flight.job.sources[i], hyps)
                flight.left -= 1
                if flight.left == 0:
                    flight.job.future.set_result(flight.results)
                    flights.remove(flight)
                    unanswered.discard(flight.job)
            waited += 1
            joining = self._joining(worker, first, flights, stream.live, waited)
            if joining:
                waited = 0
                unanswered.update(joining)
                self._report(round_)
                round_ = self._admit(stream, joining, flights)
                unanswered.difference_update([job for job in joining if job.future.done()])  # empty lines only
        self._report(round_)

    def _admit(self, stream: BeamStream, jobs: list[Job], flights: list[_InFlight]) -> _Round:
        """Jobs join the stream: empty lines are answered at once (they never reach the model)."""
        round_ = _Round()
        sources, tags = [], []
        for job in jobs:
            flight = _InFlight(job, [[] for _ in job.sources], 0)
            for i, ids in enumerate(job.sources):
                if ids is None or len(ids) == 0:
                    flight.results[i] = [Translation.of(Hypothesis([], 0.0, 0.0), "", [])]
                else:
                    sources.append(ids)
                    tags.append((flight, i))
                    flight.left += 1
            if flight.left == 0:
                job.future.set_result(flight.results)
            else:
                flights.append(flight)
        round_.requests, round_.sentences = len(jobs), sum(len(job.sources) for job in jobs)
        if sources:
            stream.admit(sources, tags)
        return round_

    def _joining(self, worker: int, first: Job, flights: list[_InFlight], live: int, waited: int) -> list[Job]:
        """The queued requests that join a running stream now: from the front of the queue, those with the
        stream's options, within the token and request budgets; none while another worker holds fewer sentences
        (an idle one takes them itself). The first request that cannot join stops the others, so that the
        stream ends and its turn comes. They join once they are a quarter of the live sentences or have waited
        `JOIN_STEPS` steps: each joining runs the encoder over the newcomers, 4 ms for one sentence and 7.4 for
        four (demo model, one thread, AVX2-only CPU), so joining less often costs fewer encoder calls. At 32
        clients this rule, an eighth or 2 steps, and every step did not differ above the noise (BENCHMARKS)."""
        with self._cond:
            self._live[worker] = live
            if any(n < live for k, n in enumerate(self._live) if k != worker):
                return []
            tokens = sum(flight.job.tokens for flight in flights)
            requests, most = len(flights), self.limits.max_batch_requests or sys.maxsize
            taken: list[Job] = []
            for job in self._queue:
                if not (job.streams and job.joins(first)) or requests >= most or \
                        (requests and tokens + job.tokens > self.limits.max_batch_tokens):
                    break
                taken.append(job)
                tokens, requests = tokens + job.tokens, requests + 1
            if waited < JOIN_STEPS and 4 * sum(len(job.sources) for job in taken) < live:
                taken = []
            if taken:
                for _ in taken:
                    self._queue.popleft()
                self._set_queued(self._queued_sentences - sum(len(job.sources) for job in taken))
        return [job for job in taken if job.future.set_running_or_notify_cancel()]

    def _report(self, round_: _Round) -> None:
        if self.observer is not None and round_.requests:
            self.observer.searched(self.name, round_.requests, round_.sentences, round_.seconds)

    # ------------------------------------------------------------------------------------ a batch at once

    def _translate(self, jobs: list[Job]) -> None:
        """One search for the jobs' sentences together; each job gets its own lines back, in order."""
        if not jobs:
            return
        sources = [ids for job in jobs for ids in job.sources]
        # A sentence with constraints or a prefix is searched apart from the others by the translator, and alone
        # as in any batch: requests with and without them may share a queue turn.
        targets = None if all(job.targets is None for job in jobs) else \
            [t for job in jobs for t in (job.targets or [None] * len(job.sources))]
        start = time.perf_counter()
        try:
            results = jobs[0].translator.translate_encoded(sources, jobs[0].with_attention, targets)
        except Exception as err:  # the worker must outlive a failed search; each caller gets the error
            log.exception("%s: search of %d sentences failed", self.name, len(sources))
            for job in jobs:
                job.future.set_exception(err)
            return
        if self.observer is not None:
            self.observer.searched(self.name, len(jobs), len(sources), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            job.future.set_result(results[offset:offset + len(job.sources)])
            offset += len(job.sources)

    def _set_queued(self, sentences: int) -> None:
        self._queued_sentences = sentences
        if self.observer is not None:
            self.observer.queued(self.name, sentences)
