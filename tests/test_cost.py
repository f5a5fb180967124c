"""The roofline estimate (`compile_check.cost`): its FLOP counts against XLA's on unrolled
programs, and the command on the 7B recipe."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from veripo_jax.compile_check import cost
from veripo_jax.compile_check.topology import parse_topology
from veripo_jax.models.qwen2_5_vl.config import PRESETS, TextConfig
from veripo_jax.models.qwen2_5_vl.model import Qwen25VL, prepare_inputs


def xla_flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


@pytest.mark.parametrize("heads,kv,length", [(4, 2, 128), (8, 8, 64)])
def test_decoder_forward_flops_match_xla_on_an_unrolled_decoder(heads, kv, length):
  """A forward of the unscanned decoder (no loop hides work from XLA's count): XLA computes
  every query against every key (the causal mask applied after), so keys = the length. Within
  2% (measured 0.6%): XLA also counts norms, rope, softmax and the activation, which the
  estimate leaves out."""
  text = TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=768,
                    num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                    head_dim=64, mrope_section=(8, 12, 12), max_position_embeddings=4096)
  config = dataclasses.replace(PRESETS["tiny"], text=text, vision=None)
  model = Qwen25VL(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  inputs, _ = prepare_inputs(config, np.full((2, length), 5, np.int32), None)

  def forward(state, inputs):
    return nnx.merge(graphdef, state).forward(inputs)
  measured = xla_flops(forward, state, inputs)
  expected = cost.decoder_forward_flops(text, 2 * length, keys=length)
  assert measured == pytest.approx(expected, rel=0.02)
  # Independently: the matmul weights a token multiplies, counted by hand.
  q, k = heads * 64, kv * 64
  by_hand = 2 * (256 * (q + 2 * k) + q * 256 + 3 * 256 * 768) + 256 * 1024
  assert cost.decoder_matmul_params(text) == by_hand


def test_causal_keys_is_the_mean_of_a_triangle():
  for n in (1, 7, 512):
    assert cost.causal_keys(n) == np.mean(np.arange(1, n + 1))


def test_decode_is_bounded_by_hbm_and_updates_by_compute():
  """Rooflines on a v5p-128: a decode step of the 7B reads ~3.5 GB of weights per chip and is
  memory-bound; a long sequence's forward is compute-bound."""
  roof = cost.Roofline(parse_topology("v5p-128"))
  text = PRESETS["7b"].text
  weights = cost.decoder_matmul_params(text) * 2 / 4
  step = roof.step(cost.decoder_forward_flops(text, 64, 2048), weights)
  assert step == pytest.approx(weights / 2765e9)
  assert roof.compute(1e15) == pytest.approx(1e15 / (64 * 459e12))


def test_the_command_estimates_every_grpo_and_dpo_stage_of_the_7b_recipe():
  result = subprocess.run(
      [sys.executable, "-m", "veripo_jax.compile_check.cost",
       "--config=configs/veripo_qwen2_5_vl_7b.py", "--topology=v5p-128"],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  stages = [line.split()[0] for line in lines[2:] if line and not line.startswith("GRPO")]
  assert stages == ["activation", "search_image", "search_video", "dpo_1", "grpo_1", "dpo_2",
                    "grpo_2"]
  ratio = float(lines[-1].split(":")[1].split("x")[0])
  assert ratio > 1


def test_a_bad_topology_is_a_one_line_error():
  result = subprocess.run(
      [sys.executable, "-m", "veripo_jax.compile_check.cost",
       "--config=configs/veripo_qwen2_5_vl_7b.py", "--topology=v9-8"],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("compile_check.cost: unknown TPU topology 'v9-8'")
