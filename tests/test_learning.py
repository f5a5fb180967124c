"""The paper's Figure 1 in miniature, on `configs/tiny.py` reduced to what CI can afford: the SFT
warm start, GRPO, the verifier (rules instead of the trained judge, which agrees with them on
91-99% of the rollouts in full runs) and DPO on its pairs, each followed by its held-out
evaluation.

Asserted, because it held in every run measured: the warm start states conclusions; GRPO does
not lose accuracy; DPO on the verifier's pairs lowers the inconsistency rate GRPO left, within
two standard errors of GRPO's accuracy. The size of DPO's drop is not asserted: it was 4.9-12.5
standard errors in the README's runs on an AMD EPYC VM, but 1.3 (0.519 -> 0.472) in this test
on a 2-core Intel Xeon VM, where XLA's CPU kernels send the same seed down another trajectory.
Nor are the issue's +0.10 GRPO gain (+0.02 to +0.08 measured) or the length directions (GRPO
shortened and DPO lengthened on the AMD VM; on the Intel VM GRPO shortened here, lengthened in
the README run, and DPO kept or shortened).
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
  runner.run(cfg, str(tmp_path))
  with open(tmp_path / "report.json", encoding="utf-8") as f:
    warm, grpo, dpo = json.load(f)["evaluations"]
  se = lambda key, a, b: math.hypot(a[f"{key}_se"], b[f"{key}_se"])
  assert warm["conclusion_rate"] >= 0.7, warm
  assert grpo["accuracy"] >= warm["accuracy"], (warm, grpo)
  assert dpo["inconsistency_rule"] < grpo["inconsistency_rule"], (grpo, dpo)
  assert grpo["accuracy"] - dpo["accuracy"] <= 2 * se("accuracy", grpo, dpo), (grpo, dpo)
