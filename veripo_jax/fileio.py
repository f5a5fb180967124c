"""Atomic file and directory writes: a crash never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import logging


def temp_dir_beside(path: str) -> str:
  """A fresh temporary directory on the same filesystem as `path` (so a rename is atomic)."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)


def replace_dir(tmp: str, path: str) -> None:
  """Moves the finished directory `tmp` to `path`; an existing `path` is moved aside first,
  so at every moment one complete version exists."""
  if os.path.exists(path):
    old = f"{path}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)
  else:
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_jsonl_atomic(path: str, records) -> None:
  """One JSON document per line (rollouts, pairs, checks, responses), written atomically."""
  write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: str) -> list:
  """The JSON documents of a JSON-lines file, blank lines skipped; a bad line is an error that
  names the file and line."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{line_no}: not JSON ({e})") from e
  return out


def write_json_atomic(path: str, payload: dict) -> None:
  write_text_atomic(path, json.dumps(payload, indent=2))


def drop_partial_last_line(path: str) -> None:
  """Truncates a last line without its newline (a crash mid-write), so appends stay valid."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return
    cut = data.rfind(b"\n") + 1
    logging.warning("%s: dropping a partial last line left by an interrupted write", path)
    f.truncate(cut)


def append_jsonl(path: str, records) -> None:
  """Appends records as JSON lines in one write, flushed to disk: a crash loses at most this
  call's lines (a partial last line, which `drop_partial_last_line` removes on resume)."""
  text = "".join(json.dumps(r) + "\n" for r in records)
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
