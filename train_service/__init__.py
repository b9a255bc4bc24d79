"""The Keras training worker: one training job at a time from the work queue.

Imports inside the package run one way: a module imports only from the layers below its own and
nothing imports upward. Highest first:

    __main__                               the composition: scheduler, trainer, device setup
    scheduler, trainer                     model jobs waiting for datasets; the training worker
    session                                one run in the training thread (imports Keras)
    export, finetune, lr_policy,           what a run is made of: export, fine-tuning, learning
    networks, solvers, tasks               rates, networks, optimizers, the task of a dataset
    data, devices                          the input pipelines; device plans and strategies
    shard_cache                            shared shard readers and the decoded-sample cache

so ``__main__ -> trainer -> session -> tasks -> data -> shard_cache``. The trainer imports
``session`` inside ``on_train`` so that Keras loads with the first job, and hands it a ``Bridge``
that ``session`` knows only as the ``SessionBridge`` protocol.
"""
