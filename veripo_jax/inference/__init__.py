"""KV-cache inference: sampling and batched generation."""

from veripo_jax.inference.generate import GenerateOutput, generate
from veripo_jax.inference.sampling import SamplingParams, filter_logits, next_token

__all__ = ["generate", "GenerateOutput", "SamplingParams", "filter_logits", "next_token"]
