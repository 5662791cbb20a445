"""What the Spark backends (``orca``, ``spark_ddp``) share: one DDP job, followed epoch by epoch.

The two backends differ only in how they start N worker processes
(:mod:`mnist_mlops.training.backends.orca`, :mod:`mnist_mlops.training.backends.spark_ddp`).
The rest is here, once, one concern per module:

- :mod:`.driver`: the driver half (``DistributedBackend.fit``: ship the job, launch, turn each
  epoch report into ``trainer.epoch_finished`` on the driver; ``test`` on the driver);
- :mod:`.protocol`: what is sent (the :class:`~.protocol.TrainJob`) and returned (epoch
  reports, done, a worker's failure);
- :mod:`.channel`: the authenticated socket both ends talk over;
- :mod:`.sampler`: which rows each rank trains on (in memory, or its streamed shard);
- :mod:`.worker`: one rank running :class:`~mnist_mlops.training.loop.EpochLoop` (the
  ``spark_ddp`` entry :func:`~.worker.ddp_worker`), and :mod:`.orca_worker`: the same loop
  driven from Orca's hooks.
"""
