"""Who may label a prediction: signed feedback tokens and a per-client rate limit.

Every prediction response carries ``feedback_token`` = keyed BLAKE2b (a MAC, like HMAC) of the
prediction id under a server secret. Feedback that presents the token is *trusted*: it comes
from whoever received that prediction, not from someone guessing or harvesting ids. Feedback
without a token is accepted as *untrusted* (unless ``feedback_require_token``), and retraining
ignores untrusted labels unless explicitly allowed (``feedback.allow_untrusted``). A token
that does not match is refused (403).

The secret comes from ``MNIST_FEEDBACK_SECRET``; unset, it is generated once per log folder
and kept in ``<log_dir>/.feedback-secret`` (mode 0600), so every worker and every server on
that folder signs alike and tokens survive restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mnist_mlops.predictions import PredictionLogWriter

SECRET_FILE = ".feedback-secret"
_log = logging.getLogger(__name__)
TOKEN_BYTES = 16


def load_or_create_secret(log_dir: str | Path, configured: str = "") -> bytes:
    """The configured secret, else the folder's persisted one (created atomically if absent)."""
    if configured:
        return configured.encode()
    path = Path(log_dir) / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    except OSError as exc:
        _log.error("cannot read %s (%s): tokens signed now will not survive a restart", path, exc)
        return os.urandom(32)
    secret = os.urandom(32)
    tmp = path.with_name(f"{SECRET_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret.hex())
        try:
            os.link(tmp, path)  # fails if another worker won the race: use theirs
        except FileExistsError:
            secret = bytes.fromhex(path.read_text().strip())
    except OSError as exc:  # an unwritable folder must not stop the server from starting
        _log.error("cannot persist %s (%s): tokens will not survive a restart", path, exc)
    finally:
        tmp.unlink(missing_ok=True)
    return secret


class FeedbackSigner:
    """Signs prediction ids and checks tokens in constant time."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the feedback secret must be at least 16 bytes")
        self._key = hashlib.blake2b(secret, digest_size=32).digest()  # any length -> 32 bytes

    def sign(self, prediction_id: str) -> str:
        mac = hashlib.blake2b(prediction_id.encode(), key=self._key, digest_size=TOKEN_BYTES)
        return mac.hexdigest()

    def sign_many(self, ids: list[str]) -> list[str]:
        return [self.sign(i) for i in ids]

    def verify(self, prediction_id: str, token: str) -> bool:
        return hmac.compare_digest(self.sign(prediction_id).encode(), token.encode())


class RateLimiter:
    """Token bucket per client key (IP): ``rate_per_s`` sustained, ``burst`` at once.

    Memory is bounded: at most ``max_clients`` buckets, least recently seen evicted first
    (an evicted client starts again with a full bucket, which only loosens the limit)."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(max(1, burst))
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> float:
        """0.0 if the request may go ahead (a token is taken), else seconds until it may."""
        if self.rate <= 0:
            return 0.0  # disabled
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class FeedbackOutcome:
    """What /feedback answers: the HTTP status, the metric outcome, and the body's detail."""

    status: int
    outcome: str
    detail: str = ""
    trusted: bool = False
    retry_after_s: float = 0.0


class FeedbackDesk:
    """The whole /feedback policy, kept out of the route so it can be tested without HTTP.

    Order matters for cost: the rate limit is checked first (an attacker's flood costs a dict
    lookup), then the token (a MAC), and only untrusted feedback needs the id index."""

    def __init__(
        self,
        log: PredictionLogWriter,
        signer: FeedbackSigner,
        limiter: RateLimiter,
        require_token: bool = False,
    ) -> None:
        self.log = log
        self.signer = signer
        self.limiter = limiter
        self.require_token = require_token

    def give(
        self, prediction_id: str, label: int, token: str | None, client: str
    ) -> FeedbackOutcome:
        if (wait := self.limiter.allow(client)) > 0:
            return FeedbackOutcome(
                429,
                "rate_limited",
                f"too much feedback from {client}: retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        if token is not None and not self.signer.verify(prediction_id, token):
            return FeedbackOutcome(
                403, "bad_token", f"feedback_token does not match prediction id {prediction_id}"
            )
        trusted = token is not None
        if not trusted and self.require_token:
            return FeedbackOutcome(
                401, "bad_token", "feedback needs the feedback_token returned with the prediction"
            )
        # A valid token proves the id was served by a worker sharing the secret, so trusted
        # feedback skips the log lookup (the prediction may still sit in another worker's buffer).
        if not trusted and not self.log.contains(prediction_id):
            return FeedbackOutcome(404, "unknown_id", f"unknown prediction id {prediction_id}")
        existing = self.log.feedback_given(prediction_id)
        if existing is not None and (existing or not trusted):
            # one label per id: the first wins; only a trusted label may follow an untrusted one
            return FeedbackOutcome(
                409, "duplicate", f"prediction id {prediction_id} already has feedback"
            )
        if not self.log.log_feedback(prediction_id, label, trusted=trusted, client=client):
            return FeedbackOutcome(
                503, "storage_failed", "feedback could not be stored (disk full?); try again"
            )
        outcome = "recorded_trusted" if trusted else "recorded_untrusted"
        return FeedbackOutcome(200, outcome, trusted=trusted)
