"""Dataset jobs and job commands: itemize, shard, write LMDB, finalize.

Imports inside the package run one way: a module imports only from the layers below its own,
nothing imports upward, and no import is deferred to dodge a cycle. Highest first:

    __main__                 the composition: builds the pipeline and the watcher, adds workers
    watch                    S3 notifications become new versions (drives the pipeline)
    pipeline                 the coordinator and the shard workers
    finalize, shards         shard bookkeeping and the manifest; a shard's chunks in the pool
    layout, encode, worker   store keys, stage names, claims, the watch config; the encoding
                             processes' code; the prefetching pull loop

so ``__main__ -> watch -> pipeline -> finalize -> layout`` and ``pipeline -> shards -> encode``.
"""
