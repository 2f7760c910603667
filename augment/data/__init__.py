"""Data on disk and in memory: the shard format, token files, the dataset card, real datasets, mixing, verification."""
