"""The paper's Figure 1 in miniature, on `configs/tiny.py` reduced to what CI can afford: the SFT
warm start, GRPO (half the rounds), the verifier (rules instead of the trained judge, which
agrees with them on 91-99% of the rollouts in full runs) and DPO on its pairs, each
followed by its held-out evaluation (two answers per question).

Asserted, because it held in every run measured: the warm start states conclusions; GRPO keeps
the warm start's accuracy (within two standard errors); DPO on the verifier's pairs lowers the
inconsistency rate GRPO left, within two standard errors of GRPO's accuracy.

Not asserted: the size of GRPO's gain. XLA's CPU kernels differ between machines, so the same
seed takes another trajectory on each (and threads make runs on one machine differ slightly).
Here, on a 2-core Intel Xeon VM (2026-12-02): accuracy 0.243 -> 0.340 -> 0.333, inconsistency
0.684 -> 0.523 -> 0.400, in 9.7 minutes (with one DPO epoch: 0.433 -> 0.398, too close to
assert). With all 48 rounds and four answers per question, 0.249 -> 0.373 -> 0.377 and
0.707 -> 0.531 -> 0.294 on that VM, but 0.237 -> 0.220 after GRPO on the CI machine, and +0.04
to +0.12 over three seeds on an AMD EPYC VM (README). Nor the length directions, which change
sign between machines.
"""

import json
import math
import os

import pytest

from veripo_jax import main as runner
from veripo_jax.config_utils import load_config_file

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grpo_then_verifier_dpo_show_figure_1(tmp_path):
  cfg = load_config_file(os.path.join(REPO, "configs/tiny.py"))
  cfg.data.split_sizes = {"train": 1024, "heldout": 256}     # the judge splits are not needed
  cfg.stage_order = ("sft", "eval_sft", "grpo", "eval_grpo", "verifier", "dpo", "eval_dpo")
  cfg.stages.verifier.judge.from_stage = ""                  # rules judge
  cfg.stages.grpo.rounds = 24                                # half, for CI's budget
  for name in ("eval_sft", "eval_grpo", "eval_dpo"):
    cfg.stages[name].rollout.num_samples = 2                 # 512 answers each
  runner.run(cfg, str(tmp_path))
  with open(tmp_path / "report.json", encoding="utf-8") as f:
    warm, grpo, dpo = json.load(f)["evaluations"]
  se = lambda key, a, b: math.hypot(a[f"{key}_se"], b[f"{key}_se"])
  assert warm["conclusion_rate"] >= 0.7, warm
  assert grpo["accuracy"] >= warm["accuracy"] - 2 * se("accuracy", warm, grpo), (warm, grpo)
  assert dpo["inconsistency_rule"] < grpo["inconsistency_rule"], (grpo, dpo)
  assert grpo["accuracy"] - dpo["accuracy"] <= 2 * se("accuracy", grpo, dpo), (grpo, dpo)
