"""One process of a (possibly multi-process) GRPO run of `configs/tiny.py`, for test_multihost.

  python tests/multihost_worker.py --workdir=W --dataset_dir=D --tokenizer_dir=T --batch_size=B \
      [--coordinator=127.0.0.1:PORT --num_processes=2 --process_id=I]

Set XLA_FLAGS (device count) and JAX_PLATFORMS in the environment before starting it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

TEST_REWARD = "multihost_test_checksum"
RESULT = "MULTIHOST_RESULT"     # prefixes the stdout line the test reads
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(args):
  """configs/tiny.py, cut down to a short GRPO-only run on the given world."""
  from veripo_jax.config_utils import load_config_file
  cfg = load_config_file(os.path.join(_REPO, "configs", "tiny.py"))
  cfg.data.source = "tfds"
  cfg.data.dataset_dir = args.dataset_dir
  cfg.data.tokenizer_dir = args.tokenizer_dir
  cfg.stage_order = ("grpo",)
  # The preset's size (as before the embedded default widened its policy): this compares the
  # multi-host path with one process, and fewer long reductions keep fp32 order effects small.
  cfg.model.text, cfg.model.vision = {}, {}
  grpo = cfg.stages.grpo
  grpo.rounds = 2
  grpo.data.batch_size = args.batch_size
  grpo.rollout.num_samples = args.num_samples
  grpo.rollout.max_new_tokens = 16
  grpo.global_batch = args.global_batch
  grpo.micro_batch = args.micro_batch
  grpo.share_prompt = False                # a response a row: the rows split over the hosts
  grpo.rollout.rewards = ("accuracy", "format", TEST_REWARD)
  grpo.save_every_rounds = 1
  grpo.optimizer.learning_rate = 1.5e-3    # a first step large enough that later losses are not ~0
  return cfg


def register_test_reward():
  """A reward that varies between random responses (a fresh model scores 0 on the others), so
  advantages and GRPO losses are not all zero."""
  from veripo_jax.rl.rewards import register_reward

  @register_reward(TEST_REWARD)
  def _checksum(response, example):
    del example
    return (sum(map(ord, response)) % 97) / 96


def main(argv=None):
  parser = argparse.ArgumentParser()
  for name in ("workdir", "dataset_dir", "tokenizer_dir"):
    parser.add_argument(f"--{name}", required=True)
  parser.add_argument("--batch_size", type=int, required=True)
  parser.add_argument("--num_samples", type=int, default=2)
  parser.add_argument("--global_batch", type=int, default=2)
  parser.add_argument("--micro_batch", type=int, default=2)
  parser.add_argument("--coordinator", default=None)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=None)
  args = parser.parse_args(argv)

  if args.process_id is not None:   # before anything else touches a jax backend
    from veripo_jax.parallel import multihost
    multihost.initialize(args.coordinator, args.num_processes, args.process_id,
                         cpu_collectives="gloo")
  import jax
  from absl import flags, logging
  flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.WARNING)
  jax.config.update("jax_default_matmul_precision", "highest")
  from veripo_jax import main as veripo_main
  register_test_reward()

  summaries = veripo_main.run(tiny_config(args), args.workdir)
  result = {"process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "summaries": summaries}
  print(RESULT, json.dumps(result, default=str))
  sys.stdout.flush()


if __name__ == "__main__":
  try:
    main()
  except BaseException:   # noqa: BLE001
    # Exit now: a normal exit waits in jax.distributed's shutdown barrier for the peer, which
    # itself waits in a collective for this process, so neither would ever end.
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
