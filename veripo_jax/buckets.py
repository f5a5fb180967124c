"""Padding sizes: few distinct shapes, so a few compiled programs serve every batch."""

from __future__ import annotations

from typing import Sequence


def bucket(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n (0 stays 0); past the last one, the next multiple of it."""
  if n == 0:
    return 0
  for b in buckets:
    if n <= b:
      return b
  return -(-n // buckets[-1]) * buckets[-1]
