"""The prediction log: every served prediction, kept for drift monitoring and feedback.

Shared storage between serving (which writes it) and monitoring/retraining (which read it);
neither side knows the format, both go through this package: :mod:`.format` (schemas, names,
framing), :mod:`.writer`, :mod:`.reader` and :mod:`.index` (the incremental id lookup).

Storage is a directory of Arrow IPC *stream* segments, readable by any Arrow tool::

    <log_dir>/predictions-<start_ns>-<writer>.arrows   id, timestamp, model_version, predicted,
                                                      probabilities[10], image (784 bytes)
    <log_dir>/feedback-<start_ns>-<writer>.arrows      id, timestamp, label, trusted, client
    <log_dir>/.writer-<writer>.lock                    flock held while the writer is alive

    # an operator's one-liner (pandas + pyarrow):
    pd.concat(pa.ipc.open_stream(p).read_pandas() for p in sorted(Path(d).glob("predictions-*")))

Why it is safe with any number of writers (uvicorn workers, several servers on one folder):

- Each writer (one per process, or per ``PredictionLogWriter`` object) appends only to segments
  carrying its own id and holds an exclusive ``flock`` on its lock file while alive.
- Size budget: each writer keeps its own segments within its share of the budget
  (``max_total_bytes / live writers``) by deleting its *own* oldest closed segments, and, while
  the folder is over ``max_total_bytes``, retires the oldest segments among its own closed ones
  and those of *dead* writers (lock not held: crashed or stopped servers). The check runs after
  every write and on every flusher tick, so an idle writer also yields to a newcomer. A live
  writer's segments are never deleted by anyone else, so nothing is ever appended to an
  unlinked file. The folder can exceed the budget by about one open segment per live writer.
- A record batch is written whole or not at all: on a short write, ``ENOSPC`` or ``EFBIG`` the
  segment is truncated back to the end of the last whole batch and the failure is counted.
- A deleted folder (or segment, or lock file) is recreated on the next write, and counted.
- The reader resynchronises past damage: a torn tail is skipped; a corrupt batch in the middle
  is skipped up to the next batch that parses and validates; a segment whose schema cannot be
  read is skipped whole. Damage is counted in :class:`LogDamage`, never raised.

Requests only append to an in-memory buffer under a lock; a background thread writes the
buffer out every ``flush_interval_s`` seconds, so logging costs a request microseconds.
Feedback (the true label of a prediction id) is written synchronously (it is rare, and the
client must learn whether it was stored) and joined at read time: per prediction id a trusted
label beats an untrusted one, and among labels of equal trust the *first* wins, so repeats
cannot replace legitimate feedback.
"""

from mnist_mlops.predictions.format import (
    FEEDBACK_SCHEMA,
    PREDICTION_SCHEMA,
    LogDamage,
    new_prediction_id,
    read_segment,
)
from mnist_mlops.predictions.index import prediction_exists
from mnist_mlops.predictions.reader import PredictionWindow, feedback_winners, read_prediction_log
from mnist_mlops.predictions.writer import PredictionLogWriter

__all__ = [
    "FEEDBACK_SCHEMA",
    "PREDICTION_SCHEMA",
    "LogDamage",
    "PredictionLogWriter",
    "PredictionWindow",
    "feedback_winners",
    "new_prediction_id",
    "prediction_exists",
    "read_prediction_log",
    "read_segment",
]
