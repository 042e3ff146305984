"""Tracking: metrics.jsonl always, wandb optionally; run metadata."""
