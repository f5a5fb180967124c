"""CLI: python -m veripo_jax.data.synthetic --out=DIR --seed=0 --train=2000 --heldout=200

Writes DIR/tokenizer (a standard HF tokenizer directory) and the train/held-out TFDS datasets,
then prints their paths and the model-config overrides that fit the tokenizer.
"""

import sys

from absl import app, flags
import tensorflow_datasets as tfds

from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.models.qwen2_5_vl.config import fit_to_tokenizer, get_preset

_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "world seed")
_TRAIN = flags.DEFINE_integer("train", 2000, "training examples")
_HELDOUT = flags.DEFINE_integer("heldout", 200, "held-out examples")


def main(argv):
  del argv
  tfds.display_progress_bar(sys.stderr.isatty())
  paths = build_world(_OUT.value, seed=_SEED.value,
                      split_sizes={"train": _TRAIN.value, "heldout": _HELDOUT.value})
  config = fit_to_tokenizer(get_preset("tiny"), load_tokenizer(paths.tokenizer_dir))
  print(f"tokenizer: {paths.tokenizer_dir}\ndataset:   {paths.dataset_dir}")
  print(f"a model over it: vocab_size={config.text.vocab_size}, video_token_id="
        f"{config.video_token_id}, eos_token_id={config.eos_token_id}")


if __name__ == "__main__":
  app.run(main)
