"""The paper's Figure 1 in miniature, on `configs/tiny.py` reduced to what CI can afford: the SFT
warm start, GRPO, the verifier (rules instead of the trained judge, which agrees with them on
91-99% of the rollouts in full runs) and DPO on its pairs, each followed by its held-out
evaluation.

Asserted, because it held in every run measured (README: three seeds on an AMD EPYC VM, seed 0
on an Intel Xeon VM): the warm start states conclusions; GRPO does not lose accuracy; DPO on the
verifier's pairs lowers the inconsistency rate GRPO left by at least 3 standard errors, within
two standard errors of GRPO's accuracy. Not asserted: the issue's +0.10 GRPO gain (+0.02 to
+0.08 measured), and the response lengths, whose direction differed between the two VMs (XLA's
CPU kernels differ, so the same seed takes another trajectory): GRPO shortened and DPO
lengthened on the AMD VM, the opposite on the Intel one.
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
  drop = grpo["inconsistency_rule"] - dpo["inconsistency_rule"]
  assert drop >= 3 * se("inconsistency_rule", grpo, dpo), (grpo, dpo)
  assert grpo["accuracy"] - dpo["accuracy"] <= 2 * se("accuracy", grpo, dpo), (grpo, dpo)
