"""`nmt serve`'s settings and their defaults, in one place that imports neither torch nor FastAPI, so that
`nmt --help` stays quick and the command line shows the same defaults the code uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nmt.errors import NMTError


@dataclass(frozen=True)
class BatchLimits:
    max_batch_tokens: int = 4096  # source tokens (EOS included) of the requests one search takes
    max_batch_requests: int = 0  # requests one search takes; 0: no limit (1 turns batching off)
    max_wait: float = 0.005  # seconds the oldest request waits for others to join its search
    max_queue: int = 4096  # sentences waiting; more are refused
    searches: int = 1  # searches of one model at a time, each in a worker thread of its own (`nmt serve`: 2 on a CPU)


@dataclass(frozen=True)
class ServeSettings:
    """What `nmt serve`'s options set; `check` names the option of a bad value."""

    host: str = "127.0.0.1"
    port: int = 8000
    limits: BatchLimits = field(default_factory=BatchLimits)
    max_sentences: int = 256  # per request
    max_body_bytes: int = 1_000_000
    timeout: float = 60.0  # seconds from a request's arrival in the queue to its answer
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_connections: int = 512  # open connections and requests in progress; more get uvicorn's 503
    access_log: bool = True

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise NMTError(f"--port must be between 0 and 65535, got {self.port}")
        positive = {"--max-batch-tokens": self.limits.max_batch_tokens,
                    "--max-queue": self.limits.max_queue, "--max-sentences": self.max_sentences,
                    "--searches": self.limits.searches,
                    "--max-body-bytes": self.max_body_bytes, "--max-connections": self.max_connections}
        for option, value in positive.items():
            if value < 1:
                raise NMTError(f"{option} must be at least 1, got {value}")
        if not (math.isfinite(self.limits.max_wait) and self.limits.max_wait >= 0):
            raise NMTError(f"--max-wait-ms must be a number of at least 0, got {self.limits.max_wait * 1000:g}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise NMTError(f"--timeout must be a positive number of seconds, got {self.timeout:g}")
        if self.limits.max_batch_requests < 0:
            raise NMTError(f"--max-batch-requests must be at least 0, got {self.limits.max_batch_requests}")
        if self.max_sentences > self.limits.max_queue:
            raise NMTError(f"--max-sentences {self.max_sentences} is more than --max-queue "
                           f"{self.limits.max_queue}: such a request could never be queued")
        if self.api_key is not None and not self.api_key.strip():
            raise NMTError("--api-key (or NMT_API_KEY) is empty")


