"""How much the `hoe` command prints: quiet by default, every detail with `-v/--verbose`.

    quiet    our warnings and errors, the libraries' errors only; their INFO lines (onnxscript, onnx_ir),
             torch.onnx's "Skipping torchvision::..." warnings, Python warnings and transformers' per-load
             "Loading weights" bars are hidden. Progress bars of our long stages (tqdm) and results stay.
    verbose  DEBUG for hoe, INFO for the libraries, their warnings and bars: what the command printed before.

Only the command line calls `configure`; a library user's logging is left alone. Environment variables the
user set win over ours (setdefault), and nothing is changed when logging is already set up (e.g. by pytest).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Read by the libraries when they are imported, which happens after the CLI starts (imports are lazy).
QUIET_ENV = {
    "TORCH_LOGS": "-onnx",  # torch.onnx at ERROR: hides "torchvision is not installed. Skipping ..." warnings
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TRANSFORMERS_VERBOSITY": "error",
}


def configure(verbose: bool) -> None:
    """Set up logging on stderr for one `hoe` command (no-op when the root logger already has handlers)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.INFO)
        logging.getLogger("hoe").setLevel(logging.DEBUG)
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    root.setLevel(logging.WARNING)
    handler.addFilter(_ours_or_error)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"hoe\.")


def _ours_or_error(record: logging.LogRecord) -> bool:
    """Our records at WARNING and above; a library's only at ERROR and above."""
    return record.name == "hoe" or record.name.startswith("hoe.") or record.levelno >= logging.ERROR
