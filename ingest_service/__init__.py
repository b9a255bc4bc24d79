"""Dataset jobs and job commands: itemize, shard, write LMDB, finalize."""
