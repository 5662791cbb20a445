"""Safe automated retraining: trigger -> feedback snapshot -> challenger -> gate -> (promote).

Safety properties, and how they hold:
- Only one retrain at a time: an exclusive ``flock`` (:mod:`.lock`).
- The ``production`` alias moves in exactly one registry call, inside ``promote_if_better``,
  after every evaluation succeeded. Serving follows the alias, so until then it serves the
  old champion, whatever happens to this process.
- No half-registered version: a version registered by an interrupted retrain (SIGTERM/SIGINT
  -> cleanup here; SIGKILL -> cleanup by the next retrain, :func:`recover_interrupted`) is
  deleted unless it became the champion. Versions are recognised by the ``retrain_id`` tag
  on their training run.
- Feedback snapshots are content-addressed folders made by one rename, never rewritten
  (:mod:`.feedback`), and named on the challenger's MLflow run.
- Every outcome reaches ``report_path``: ``running`` as soon as the lock is held (the previous
  run's outcome never stays there), then ``skipped``/``promoted``/``rejected``, or ``failed``
  with the error (exceptions, a failing or timed-out child, SIGTERM).
- Training runs in a child process that dies with its parent (``PR_SET_PDEATHSIG``), so a
  killed retrain does not leave an orphan training job behind (:mod:`.children`).

Layout: :mod:`.settings` (typed settings built once from ``conf/retrain.yaml``),
:mod:`.cycle` (one guarded cycle), :mod:`.children` (child entrypoints), :mod:`.feedback`
(feedback snapshots), :mod:`.lock` (one retrain at a time). The entrypoint is
``python -m mnist_mlops.retrain``.
"""
