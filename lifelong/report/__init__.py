"""Sweep dir -> the paper's table (Markdown, CSV, LaTeX) and plots."""
