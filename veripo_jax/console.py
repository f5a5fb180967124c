"""What the main command prints: our own progress lines, other libraries only on request, and a
short summary table at the end.

Verbosity is absl's standard `--verbosity` / `-v` flag, read as:

  -v -1 (or lower)  warnings and errors only, ours included (absl's meaning);
  -v 0 (default)    our INFO lines (stage starts and ends, progress, report path); other
                    libraries' (JetStream, Orbax, TFDS, TensorFlow, grain, jax, gRPC) WARNING and
                    above, less a few known-harmless ones; TensorFlow/XLA C++ logs at ERROR;
  -v 1              INFO from every library too, and the warnings hidden at 0;
  -v 2              DEBUG from everything (what absl's own -v 1 means); -v N > 2: absl's N - 1.

Only the standard library is imported here: `quiet_native_logs` must run before TensorFlow,
gRPC or XLA start logging, i.e. before the heavy imports.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import math
import os
import re
import sys
import warnings
from typing import Any, Mapping, Sequence

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# JAX warns whenever a donated input buffer cannot be reused in place; on CPU that is most of
# them, and it changes nothing a user can act on.
DONATION_WARNING = "Some donated buffers were not usable"
# Third-party WARNINGs that every run prints and that mean nothing to a user:
# (end of the logging file's path, start of the message).
_HARMLESS = (
    # TensorBoard gets NaN on purpose (e.g. an inconsistency rate with nothing to measure).
    (os.path.join("tensorboardX", "x2num.py"), "NaN or Inf found in input tensor"),
    # The synthetic world is a TFDS builder config made at run time.
    (os.path.join("tensorflow_datasets", "core", "dataset_builder.py"),
     "Using custom data configuration"),
)


def verbosity_from_argv(argv: Sequence[str]) -> int:
  """absl's -v / --verbosity from a raw command line (0 when absent or unreadable), for the
  settings that must be made before absl parses the flags."""
  value = None
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == "--":
      break
    m = re.fullmatch(r"--?(?:v|verbosity)(?:=(.*))?", arg)
    if m is None:
      continue
    value = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args) else "")
  try:
    return int(value) if value is not None else 0
  except ValueError:
    names = {"debug": 2, "info": 0, "warning": -1, "error": -2, "fatal": -3}
    return names.get(str(value).lower(), 0)


def quiet_native_logs(verbosity: int) -> None:
  """Sets the C++ log thresholds (TensorFlow, XLA, gRPC) unless the user has set them; they are
  read once, when those libraries load, so this must run before they are imported."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbosity >= 1 else "2")   # 2: ERROR
  os.environ.setdefault("GRPC_VERBOSITY", "INFO" if verbosity >= 2 else "ERROR")


_PCI_GOOGLE, _PCI_NVIDIA = "0x1ae0", "0x10de"      # TPU chips' and GPUs' PCI vendor ids


def skip_absent_tpu(pci_devices: str = "/sys/bus/pci/devices") -> None:
  """Runs on the CPU, not through libtpu, where libtpu is installed (requirements-test.txt has
  it, for compile_check) but no TPU chip is attached: jax would try libtpu first, and libtpu
  prints a page of warnings and an INVALID_ARGUMENT trace before jax falls back to the CPU.
  Leaves JAX_PLATFORMS alone when the user set it or a GPU is attached. Before jax starts."""
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  vendors = set()
  for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor) as f:
        vendors.add(f.read().strip().lower())
    except OSError:
      continue
  if not vendors & {_PCI_GOOGLE, _PCI_NVIDIA}:
    os.environ["JAX_PLATFORMS"] = "cpu"


class _ThirdPartyFilter(logging.Filter):
  """Drops records below `threshold` unless they come from this package."""

  def __init__(self, threshold: int, drop_harmless: bool):
    super().__init__("veripo_jax.console")
    self.threshold = threshold
    self.drop_harmless = drop_harmless

  def filter(self, record: logging.LogRecord) -> bool:
    if is_ours(record):
      return True
    if record.levelno < self.threshold:
      return False
    return not (self.drop_harmless and _harmless(record))


def is_ours(record: logging.LogRecord) -> bool:
  """A record logged by veripo_jax code: through its own loggers, or through absl / the root
  logger from a file of the package (absl records carry the caller's path)."""
  name = record.name or ""
  if name == "veripo_jax" or name.startswith("veripo_jax."):
    return True
  return os.path.abspath(record.pathname or "").startswith(PACKAGE_DIR + os.sep)


def _harmless(record: logging.LogRecord) -> bool:
  path = record.pathname or ""
  return any(path.endswith(suffix) and record.getMessage().startswith(prefix)
             for suffix, prefix in _HARMLESS)


def logging_levels(verbosity: int) -> tuple[int, int]:
  """(our level, other libraries' level) for an absl verbosity; see the module docstring."""
  if verbosity < 0:
    ours = {-1: logging.WARNING, -2: logging.ERROR}.get(verbosity, logging.CRITICAL)
  elif verbosity <= 1:
    ours = logging.INFO
  else:
    ours = logging.DEBUG - (verbosity - 2)
  return ours, (max(ours, logging.WARNING) if verbosity <= 0 else ours)


def setup_logging(verbosity: int = 0) -> None:
  """Applies `verbosity` to Python logging (absl's included) and to Python warnings; call it
  after absl has parsed the flags (absl's handler on the root logger), again to change it.

  One filter goes on the root logger (JetStream logs through it directly), on absl's logger
  (Orbax, TFDS and grain log through absl, as we do) and on the root's handlers (every other
  library's named logger reaches them). TFDS progress bars are turned off when stderr is not a
  terminal (each update would be a line).
  """
  ours, others = logging_levels(verbosity)
  root = logging.getLogger()
  root.setLevel(ours)
  absl_logger = logging.getLogger("absl")
  absl_logger.setLevel(logging.NOTSET)          # inherit the root's level, as under app.run
  new = _ThirdPartyFilter(others, drop_harmless=verbosity <= 0)
  for target in [root, absl_logger, *root.handlers]:
    for old in [f for f in target.filters if isinstance(f, _ThirdPartyFilter)]:
      target.removeFilter(old)
    target.addFilter(new)
  # TensorFlow adds its own handler when it is imported before any is on the root logger.
  logging.getLogger("tensorflow").setLevel(others)
  if verbosity <= 0:
    warnings.filterwarnings("ignore", message=re.escape(DONATION_WARNING), category=UserWarning)
    tqdm_utils = sys.modules.get("tensorflow_datasets.core.utils.tqdm_utils")
    if tqdm_utils is not None and not _isatty(sys.stderr):
      tqdm_utils.disable_progress_bar()


def _isatty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


def format_duration(seconds: float) -> str:
  """`12.3 s`, `4 min 05 s`, `1 h 02 min`."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes} min {secs:02d} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min"


# ------------------------------------------------------------------------------------------------
# The end-of-run summary

# (header, value key, se key, decimals) of the evaluation table's columns after stage/follows.
_COLUMNS = (("accuracy", "accuracy", "accuracy_se", 3),
            ("length", "length_mean", "length_se", 1),
            ("inconsistency (rule)", "inconsistency_rule", "inconsistency_rule_se", 3),
            ("inconsistency (judge)", "inconsistency_judge", "inconsistency_judge_se", 3),
            ("conclusion rate", "conclusion_rate", None, 3))
NA = "n/a"


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, int | float):
    return None
  return float(value) if math.isfinite(value) else None


def _with_se(row: Mapping[str, Any], key: str, se_key: str | None, decimals: int) -> str:
  value = _number(row.get(key))
  if value is None:
    return NA
  text = f"{value:.{decimals}f}"
  se = _number(row.get(se_key)) if se_key else None
  return f"{text} ± {se:.{decimals}f}" if se is not None else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

  def line(cells):
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def format_summary(report: Mapping[str, Any], report_path: str | None = None) -> str:
  """The end-of-run text from `report.json`'s contents: one row per evaluation (value ± standard
  error), one line per claim, then where the full report is. Missing values print as n/a."""
  lines = []
  evaluations = report.get("evaluations") or []
  if evaluations:
    header = ["stage", "follows", *(c[0] for c in _COLUMNS)]
    rows = [[str(e.get("stage") or NA), str(e.get("follows") or NA),
             *(_with_se(e, key, se, d) for _, key, se, d in _COLUMNS)] for e in evaluations]
    lines += ["Held-out evaluations (± standard error):", *_table(header, rows)]
  else:
    lines.append("Held-out evaluations: none in the report.")
  claims = report.get("claims") or []
  if any(c.get("held") is not None for c in claims) or evaluations:
    lines += ["", "Claims:"]
    marks = {True: "held", False: "NOT held"}
    width = max(len(str(c.get("claim", ""))) for c in claims)
    for c in claims:
      mark = marks.get(c.get("held"), NA)
      lines.append(f"  {mark:<8}  {str(c.get('claim', '')):<{width}}  {c.get('text') or ''}"
                   .rstrip())
  if report_path:
    lines += ["", f"Full report: {report_path}"]
  return "\n".join(lines)


def benchmark_summary(workdir: str, stage_order: Sequence[str]) -> str:
  """One row per benchmark of each benchmark stage's `eval_report.json` ("" when none)."""
  from veripo_jax.rl.artifacts import stage_dir
  rows, reports = [], []
  for name in stage_order:
    path = os.path.join(stage_dir(workdir, name), "eval_report.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
    reports.append(os.path.join(os.path.dirname(path), "eval_report.md"))
    pct = lambda v: NA if v is None else f"{100 * v:.1f}"
    for b in report.get("benchmarks", []):
      paper = ", ".join(f"{k} {v}" for k, v in list(b.get("paper", {}).items())[:2]) or NA
      rows.append([name, b["benchmark"], NA if b["score"] is None else f"{b['score']:.1f}",
                   paper, f"{b['scored']}/{b['items']}", pct(b["rule_inconsistency"]),
                   pct(b["judge_inconsistency"])])
  if not rows:
    return ""
  header = ["stage", "benchmark", "score", "paper", "scored/items", "rule incons. %",
            "judge incons. %"]
  return "\n".join(["Benchmarks (the authors' protocol and scoring):", *_table(header, rows),
                    *(f"Eval report: {r}" for r in reports)])


def run_summary(workdir: str, stage_order: Sequence[str]) -> str:
  """The summary of a finished run: from `WORKDIR/report.json` when it is there, else each
  stage's status (done when its `done.json` exists), then any benchmark stage's scores."""
  benchmarks = benchmark_summary(workdir, stage_order)
  text = _run_summary(workdir, stage_order)
  return f"{benchmarks}\n\n{text}" if benchmarks else text


def _run_summary(workdir: str, stage_order: Sequence[str]) -> str:
  md = os.path.join(workdir, REPORT_MD)
  path = os.path.join(workdir, REPORT_JSON)
  problem = f"{path} not found"
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        report = json.load(f)
      if isinstance(report, dict):
        return format_summary(report, md)
      problem = f"{path}: not a JSON object"
    except (OSError, ValueError) as e:
      problem = f"{path}: {e}"
  # Here, not at the top: this module loads before TensorFlow and JAX to quiet them.
  from veripo_jax.rl.artifacts import DONE_FILE, stage_dir
  rows = []
  for name in stage_order:
    done = os.path.exists(os.path.join(stage_dir(workdir, name), DONE_FILE))
    rows.append([name, "done" if done else "not finished"])
  return "\n".join([f"Stages ({problem}):", *("  " + r for r in _table(["stage", "status"], rows)),
                    "", f"Full report: {md}"])
