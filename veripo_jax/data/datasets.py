"""TFDS builders that store question records and their media bytes in ArrayRecord.

Media are stored as encoded bytes (mp4, jpg, ...) and decoded in the loader, so fps, frame limits
and pixel budgets remain train-time settings. TFDS is used without TensorFlow: only `Tensor`
features of bytes/strings/ints (no `Video`/`Image` features, which would import TF and ffmpeg).
TFDS writes into an `incomplete.*` directory and renames it when done, so a build is atomic.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from veripo_jax.data.errors import DataFormatError
from veripo_jax.data.records import READERS

FEATURES = {
    "id": (), "data_type": (), "problem_type": (), "problem": (), "options": (None,),
    "answer": (), "reasoning": (), "media": (), "media_path": (), "task": (),
}
VERSION = "1.0.0"


def _features() -> tfds.features.FeaturesDict:
  spec = {k: tfds.features.Tensor(shape=s, dtype=np.object_) for k, s in FEATURES.items()}
  spec["difficulty"] = tfds.features.Tensor(shape=(), dtype=np.int32)
  return tfds.features.FeaturesDict(spec)


def _stored(record: Mapping, media: bytes) -> dict:
  """A record in the stored layout; optional fields default to empty."""
  out = {k: record.get(k, "") for k in FEATURES if k not in ("options", "media")}
  out["options"] = list(record.get("options", []))
  out["media"] = media
  out["difficulty"] = int(record.get("difficulty", 0))
  return out



def _first(lines: list[str], limit: int = 5) -> str:
  """A few of many lines (a benchmark without its videos would list thousands)."""
  more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
  return "\n".join(lines[:limit]) + more

class MissingMediaError(DataFormatError):
  """Media files named by a question file are absent; the message lists every one."""


class QABuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: subclasses yield (key, record, media bytes) per split.

  `name` (the builder config) picks the dataset's directory: data_dir/<builder>/<name>/<version>.
  Per-split counts of skipped examples land in the dataset's metadata as `skipped`.
  """
  VERSION = tfds.core.Version(VERSION)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    """No checksums file: these builders read local files only (and TFDS's lookup of the
    builder's source needs the missing `importlib_resources` backport)."""
    return None

  def __init__(self, *, name: str = "default", **kwargs):
    self.skipped: dict[str, int] = {}
    super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features(),
                                 metadata=tfds.core.MetadataDict())

  def _split_examples(self) -> Mapping[str, Iterable[tuple[str, dict, bytes]]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    splits = self._split_examples()
    self.info.metadata["skipped"] = self.skipped
    return {split: self._generate_examples(examples) for split, examples in splits.items()}

  def _generate_examples(self, examples) -> Iterator[tuple[str, dict]]:
    for key, record, media in examples:
      yield key, _stored(record, media)


class QuestionFileBuilder(QABuilder, skip_registration=True):
  """Question files (one per split) plus a media root; `question_format` picks the reader."""

  def __init__(self, *, split_files: Mapping[str, str], media_root: str | None,
               question_format: str, allow_missing_media: bool = False, **kwargs):
    if question_format not in READERS:
      raise ValueError(f"unknown question file format {question_format!r}; "
                       f"choose from {sorted(READERS)}")
    self._reader = READERS[question_format]
    self._split_files = dict(split_files)
    self._media_root = media_root
    self._allow_missing = allow_missing_media
    super().__init__(**kwargs)

  def _media_file(self, record: Mapping) -> str:
    return os.path.join(self._media_root or "", record["media_path"])

  def _split_examples(self):
    splits, missing = {}, []
    for split, path in self._split_files.items():
      records = self._reader(path)
      kept = []
      for record in records:
        if record["data_type"] != "text":
          if self._media_root is None:
            raise DataFormatError(f"{record['where']}: a media root is needed for "
                                  f"{record['data_type']} questions")
          if not os.path.isfile(self._media_file(record)):
            missing.append(f"{record['where']}: missing {record['data_type']} "
                           f"{self._media_file(record)}")
            continue
        kept.append(record)
      self.skipped[split] = len(records) - len(kept)
      splits[split] = self._read_media(kept)
    if missing and not self._allow_missing:
      raise MissingMediaError(f"{len(missing)} media file(s) not found (pass "
                              f"allow_missing_media to skip them):\n" + _first(missing))
    if missing:
      logging.warning("skipped %d example(s) whose media are missing:\n%s", len(missing),
                      _first(missing))
    return splits

  def _read_media(self, records: list[dict]):
    for record in records:
      media = b""
      if record["data_type"] != "text":
        with open(self._media_file(record), "rb") as f:
          media = f.read()
      yield record["where"], record, media


class VideoR1Builder(QuestionFileBuilder):
  """Video-R1-style JSON/JSONL questions (+ media root) -> ArrayRecord."""
  name = "video_r1_questions"

  def __init__(self, **kwargs):
    super().__init__(question_format="video_r1", **kwargs)


class VeripoEvalBuilder(QuestionFileBuilder):
  """VerIPO evaluation question files (+ video root) -> ArrayRecord."""
  name = "veripo_eval_questions"

  def __init__(self, **kwargs):
    super().__init__(question_format="veripo_eval", **kwargs)


def data_source(dataset_dir: str | os.PathLike, split: str):
  """Random-access, picklable source over a built dataset directory (…/<name>/<version>)."""
  return tfds.builder_from_directory(os.fspath(dataset_dir)).as_data_source(split)


def skipped_at_build(dataset_dir: str | os.PathLike) -> Mapping[str, int]:
  """Per-split counts of examples the build skipped (missing media)."""
  return dict(tfds.builder_from_directory(os.fspath(dataset_dir)).info.metadata.get("skipped", {}))
