"""Generating images: the batched sampling loop into shards, samplers, and DATE refinement."""
