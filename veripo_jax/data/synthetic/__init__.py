"""The synthetic verifiable video-QA world (the embedded default's data)."""

from veripo_jax.data.synthetic.build import WorldPaths, build_world
from veripo_jax.data.synthetic.tokenizer import build_tokenizer
from veripo_jax.data.synthetic.world import WorldConfig, make_example
