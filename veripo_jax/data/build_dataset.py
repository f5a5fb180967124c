"""CLI: question files + media root -> TFDS ArrayRecord dataset.

  python -m veripo_jax.data.build_dataset --format=video_r1 --split=train=data/train.jsonl \
      --media_root=data/ --data_dir=~/tensorflow_datasets --name=my_video_qa

`--format=veripo_eval` reads the VerIPO evaluation files. Missing media stop the build with every
missing file listed, unless --allow_missing_media (then they are skipped and counted).
"""

import sys

from absl import app, flags
import tensorflow_datasets as tfds

from veripo_jax.data.datasets import VeripoEvalBuilder, VideoR1Builder, skipped_at_build

BUILDERS = {"video_r1": VideoR1Builder, "veripo_eval": VeripoEvalBuilder}
_FORMAT = flags.DEFINE_enum("format", "video_r1", list(BUILDERS), "question file format")
_SPLITS = flags.DEFINE_multi_string("split", None, "SPLIT=PATH, repeatable", required=True)
_MEDIA_ROOT = flags.DEFINE_string("media_root", None, "directory media paths are relative to")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory", required=True)
_NAME = flags.DEFINE_string("name", "default", "dataset name (TFDS builder config)")
_ALLOW_MISSING = flags.DEFINE_bool("allow_missing_media", False, "skip and count missing media")


def parse_splits(values: list[str]) -> dict[str, str]:
  splits = {}
  for value in values:
    split, sep, path = value.partition("=")
    if not sep or not split or not path:
      raise app.UsageError(f"--split expects SPLIT=PATH, got {value!r}")
    splits[split] = path
  return splits


def main(argv):
  del argv
  tfds.display_progress_bar(sys.stderr.isatty())
  builder = BUILDERS[_FORMAT.value](
      name=_NAME.value, split_files=parse_splits(_SPLITS.value), media_root=_MEDIA_ROOT.value,
      allow_missing_media=_ALLOW_MISSING.value, data_dir=_DATA_DIR.value,
      file_format="array_record")
  builder.download_and_prepare()
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} examples")
  print(f"skipped (missing media): {skipped_at_build(builder.data_dir)}")
  print(f"dataset: {builder.data_dir}")


if __name__ == "__main__":
  app.run(main)
