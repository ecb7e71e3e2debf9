"""Log verbosity of this package and of the libraries under it, set once, here.

What is noise for our use, and why it is silenced rather than fixed at its source:
- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  `CLIPImageProcessorPil`" (transformers/utils/import_utils.py): diffusers' pipeline modules import the
  torchvision name, and this package deliberately runs without torchvision (it pulls a multi-GB CUDA torch), so
  the PIL fallback is the intended path. Only that message is dropped (:class:`_TorchvisionFallbackFilter`).
- library progress bars (weights loading, dataset generation, shard writing): one-off, and unreadable in a
  log file. Our own step bar stays on a terminal; elsewhere the loop logs one line every ``--logging_steps``.
- accelerate's per-file "... saved in ..." INFO lines on every checkpoint: the loop logs one line per checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


class _TorchvisionFallbackFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


def install_import_filters() -> None:
    """Drop the torchvision-fallback warning, which fires while diffusers' pipelines are imported. Idempotent."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallbackFilter) for f in logger.filters):
        logger.addFilter(_TorchvisionFallbackFilter())


class _CurrentStderr(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is at each record, not as it was at setup: a caller
    that redirects stderr after the first run (a notebook, a test's capture) keeps getting the log."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging() -> None:
    """Our loggers at INFO, everything else at WARNING, library progress bars off. Called by each entry point."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING, handlers=[_CurrentStderr()])
    logging.getLogger("diffusers_npu").setLevel(logging.INFO)
    install_import_filters()
    import diffusers
    import transformers

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        # Their warnings through the root handler above: one format, and stderr as it is at each record.
        library.disable_default_handler()
        library.enable_propagation()
    # datasets is imported later, and only by runs that load data; it reads this at import and lets an
    # explicit user setting win (datasets/utils/tqdm.py).
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def adopt_library_logger(name: str) -> None:
    """Remove the stderr handler a library installs on its root logger at import (``datasets`` does), so its
    records reach only ours: one format, no duplicate lines, stderr as it is at each record."""
    library = logging.getLogger(name)
    for handler in list(library.handlers):
        if type(handler) is logging.StreamHandler:
            library.removeHandler(handler)
    library.propagate = True
