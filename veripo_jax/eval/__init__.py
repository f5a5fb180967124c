"""Benchmark evaluation: question files, the authors' prompts and scoring, the resumable runner."""
