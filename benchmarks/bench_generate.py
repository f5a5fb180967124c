"""Tokens/s of `veripo_jax.inference.generate` vs transformers `generate` on one random model.

Both run greedy decoding of the same random mid-size Qwen2.5-VL text config (fp32, CPU by
default) from the same weights; EOS is disabled so every row produces exactly
`--new_tokens`. Compilation is timed separately and excluded from the steady-state figure.

  python benchmarks/bench_generate.py [--hidden 512 --layers 8 --vocab 32000 --batch 8
                                       --prompt 128 --new_tokens 128 --repeats 5
                                       --repetition_penalty 1.05]
"""

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint


def hf_model(args):
  heads = args.hidden // 64
  cfg = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=args.vocab, hidden_size=args.hidden,
                       intermediate_size=args.hidden * 11 // 4, num_hidden_layers=args.layers,
                       num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1),
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                        "mrope_section": [8, 12, 12]}),
      vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2,
                         out_hidden_size=args.hidden, fullatt_block_indexes=[0]),
      image_token_id=args.vocab - 4, video_token_id=args.vocab - 3,
      vision_start_token_id=args.vocab - 2, vision_end_token_id=args.vocab - 1,
      eos_token_id=None, pad_token_id=0)
  torch.manual_seed(0)
  return Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()


def timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("hidden", 512), ("layers", 8), ("vocab", 32000), ("batch", 8),
                        ("prompt", 128), ("new_tokens", 128), ("repeats", 5)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--repetition_penalty", type=float, default=1.0,
                 help="both sides; 1.05 is the VerIPO eval setting (1 = off)")
  args = p.parse_args()
  hf = hf_model(args)
  ids = np.random.RandomState(0).randint(1, args.vocab - 8, (args.batch, args.prompt))
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    model = load_hf_checkpoint(tmp)
  batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
  n_tokens = args.batch * args.new_tokens

  def ours():
    out = generate(model, batch, args.new_tokens, eos_token_ids=(-1,),
                   repetition_penalty=args.repetition_penalty)
    jax.block_until_ready(out.tokens)
    return out

  t = time.perf_counter()
  first = ours()
  compile_s = time.perf_counter() - t

  torch_ids = torch.tensor(ids)

  def reference():
    with torch.no_grad():
      return hf.generate(input_ids=torch_ids, attention_mask=torch.ones_like(torch_ids),
                         max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                         do_sample=False, pad_token_id=0,
                         repetition_penalty=args.repetition_penalty)

  ref = reference()
  # Alternate the two so that this VM's speed drift hits both alike; pair ratios show the spread.
  pairs = [(timed(ours), timed(reference)) for _ in range(args.repeats)]
  ours_s, ref_s = (min(times) for times in zip(*pairs))
  ratios = sorted(r / o for o, r in pairs)
  same = np.array_equal(np.asarray(first.tokens), ref[:, args.prompt:].numpy())
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, torch threads "
        f"{torch.get_num_threads()}")
  print(f"config: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, batch "
        f"{args.batch}, prompt {args.prompt}, new tokens {args.new_tokens} (fp32, greedy, "
        f"repetition penalty {args.repetition_penalty})")
  print(f"veripo_jax generate: {n_tokens / ours_s:9.1f} tokens/s  ({ours_s:.3f} s; first call "
        f"incl. compile {compile_s:.1f} s)")
  print(f"transformers generate: {n_tokens / ref_s:7.1f} tokens/s  ({ref_s:.3f} s)")
  print(f"speedup: {ref_s / ours_s:.2f}x (best against best; per pair {ratios[0]:.2f}x - "
        f"{ratios[-1]:.2f}x, median {ratios[len(ratios) // 2]:.2f}x)   same greedy tokens: {same}")


if __name__ == "__main__":
  main()
