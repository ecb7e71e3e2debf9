"""Run a training example and record, per process, every batch it trains on: its pixel shape and image indices.

``RECORD_BATCHES=DIR python tests/training/record_batches.py SCRIPT [script flags]`` writes ``DIR/rank<R>.json``,
a list of ``[[height, width], [index, ...]]`` in step order. The recording wraps the recipe's ``collate`` around
the example's own ``loop.run`` call; production code has no hook.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

from diffusers_npu.training import loop


def main() -> None:
    script, *flags = sys.argv[1:]
    run = loop.run

    def run_recording(recipe, cfg, callbacks=None):
        from accelerate import PartialState

        batches = []
        collate = recipe.collate

        def recording(examples):
            batch = collate(examples)
            batches.append([list(batch["pixel_values"].shape[-2:]), batch["indices"].tolist()])
            return batch

        recipe.collate = recording
        stats = run(recipe, cfg, callbacks)
        out = Path(os.environ["RECORD_BATCHES"])
        (out / f"rank{PartialState().process_index}.json").write_text(json.dumps(batches))
        return stats

    loop.run = run_recording
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
