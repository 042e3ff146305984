"""Evaluation: probe perplexity and continual-learning metrics."""
