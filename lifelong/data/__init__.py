"""Streams of stages: the synthetic temporal world, local jsonl, and the real datasets."""
