"""Launching: distributed set-up, checkpoints and resume, preemption."""
