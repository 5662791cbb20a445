"""The wire between the driver and the workers: an authenticated socket the driver listens on.

Why a channel instead of return values: Orca returns nothing until the last epoch, and
``TorchDistributor`` in ``local_mode`` writes every rank's return value to one file (the last
writer wins), while its launcher exits 0 even when a rank crashed (pyspark 3.5.9). Rank 0 sends
its weights itself, and every rank reports its own failure, so neither quirk can lose a result
or hide an error. The messages are in :mod:`.protocol`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any

from mnist_mlops.training.distributed.protocol import (
    ChannelAddress,
    DistributedTrainingError,
    EpochReport,
    TrainingDone,
    WorkerFailed,
    receive,
    send,
)

log = logging.getLogger(__name__)

# How long the driver waits for the workers to wind down after it asked them to stop (or after
# an error on the driver) before it gives up on them.
_STOP_GRACE_S = 300.0
# After the launcher returns, how long to keep reading messages already on their way.
_DRAIN_S = 0.5


class EpochChannel:
    """The driver's end: workers connect (authenticated), send reports, get stop decisions."""

    def __init__(self, host: str) -> None:
        authkey = secrets.token_bytes(32)
        self._listener = Listener((host, 0), authkey=authkey)
        self.address = ChannelAddress(host, int(self._listener.address[1]), authkey)
        self._incoming: queue.Queue[Connection] = queue.Queue()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="epoch-channel", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception:  # a failed handshake (wrong key, port scan) is not fatal
                continue
            self._incoming.put(conn)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wake accept() so its thread can end
            socket.create_connection((self.address.host, self.address.port), timeout=1).close()
        self._listener.close()

    def serve(
        self,
        launch: Callable[[], Any],
        on_epoch: Callable[[EpochReport], bool],
        on_failure: Callable[[], None],
    ) -> TrainingDone:
        """Run ``launch`` (blocking until the workers end) while answering their messages.

        ``on_epoch`` runs on this (the calling) thread, so MLflow's thread-local active run and
        every driver callback work as in a local run; it returns True to stop training.
        """
        launched: dict[str, BaseException | None] = {"error": None}

        def run() -> None:
            try:
                launch()
            except BaseException as err:  # surfaced on the calling thread below
                launched["error"] = err

        launcher = threading.Thread(target=run, name="launch-workers", daemon=True)
        launcher.start()
        conns: list[Connection] = []
        done: TrainingDone | None = None
        failures: list[WorkerFailed] = []
        driver_error: BaseException | None = None
        stop_requested_at: float | None = None
        finished_at: float | None = None
        while True:
            if finished_at is None and not launcher.is_alive():
                finished_at = time.monotonic()  # then drain: a last message may still be queued
            while not self._incoming.empty():
                conns.append(self._incoming.get())
            ready = wait(conns, timeout=0.05 if finished_at else 0.2) if conns else []
            if not conns and not finished_at:
                time.sleep(0.2)
            for conn in ready:
                try:
                    message = receive(conn)
                except (EOFError, OSError):
                    conns.remove(conn)
                    continue
                if isinstance(message, EpochReport):
                    stop = driver_error is not None
                    if not stop:
                        try:
                            stop = bool(on_epoch(message))
                        except BaseException as err:  # e.g. a pruning callback interrupting
                            driver_error, stop = err, True
                    with contextlib.suppress(OSError):
                        send(conn, stop)
                    if stop and stop_requested_at is None:
                        stop_requested_at = time.monotonic()
                elif isinstance(message, TrainingDone):
                    done = message
                elif isinstance(message, WorkerFailed):
                    failures.append(message)
                    log.error(
                        "worker rank %d on %s failed:\n%s",
                        message.rank,
                        message.host,
                        message.traceback,
                    )
                    on_failure()
            if finished_at and not ready and time.monotonic() - finished_at > _DRAIN_S:
                break
            if stop_requested_at and time.monotonic() - stop_requested_at > _STOP_GRACE_S:
                on_failure()
                raise DistributedTrainingError(
                    f"workers did not stop within {_STOP_GRACE_S:.0f} s after the driver asked"
                )
        for conn in conns:
            conn.close()
        launch_error = launched["error"]
        if failures:
            first = failures[0]
            raise DistributedTrainingError(
                f"training failed in worker rank {first.rank} on {first.host}: {first.error}\n"
                f"--- worker traceback ---\n{first.traceback}"
            ) from launch_error
        if driver_error is not None:
            raise driver_error
        if launch_error is not None:
            raise DistributedTrainingError(
                f"launching the workers failed: {type(launch_error).__name__}: {launch_error}"
            ) from launch_error
        if done is None:
            raise DistributedTrainingError(
                "the workers ended without reporting that training finished (a worker process "
                "was probably killed: out of memory, or the cluster lost an executor)"
            )
        return done


class DriverLink:
    """Rank 0's end of the :class:`EpochChannel`."""

    def __init__(self, address: ChannelAddress) -> None:
        self._conn = Client((address.host, address.port), authkey=address.authkey)

    def report_epoch(self, report: EpochReport) -> bool:
        """Send the epoch; the driver answers whether to stop."""
        send(self._conn, report)
        return bool(receive(self._conn))

    def done(self, epochs: int) -> None:
        send(self._conn, TrainingDone(epochs))
        self._conn.close()


def report_failure(address: ChannelAddress | None, rank: int, err: BaseException) -> None:
    """Tell the driver why this rank failed (best effort: the driver may be gone too)."""
    if address is None:
        return
    message = WorkerFailed(
        rank=rank,
        host=socket.gethostname(),
        error=f"{type(err).__name__}: {err}",
        traceback="".join(traceback.format_exception(err)),
    )
    with (
        contextlib.suppress(Exception),
        Client((address.host, address.port), authkey=address.authkey) as conn,
    ):
        send(conn, message)


@contextlib.contextmanager
def failures_reported(address: ChannelAddress | None, rank: int) -> Iterator[None]:
    """Send any exception of this rank to the driver, then let it propagate (the launcher sees
    the rank fail too)."""
    try:
        yield
    except BaseException as err:
        report_failure(address, rank, err)
        raise
