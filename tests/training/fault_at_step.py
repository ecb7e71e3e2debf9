"""Run a training example with a fault injected after optimizer step N: the fault tests' driver.

``python tests/training/fault_at_step.py FAULT N SCRIPT [script flags]``, FAULT one of
- ``sigterm`` / ``sigint``: the process signals itself after step N (``RANK_ONLY=R``: only on rank R);
- ``enospc``: accelerate's ``save_state`` writes its files and then fails with ENOSPC from step N on, as a full
  disk does mid-write.
The fault is a loop callback or a wrapper around the example's own ``loop.run``; production code has no hook.
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys

from diffusers_npu.training import loop


def main() -> None:
    fault, at, script, *flags = sys.argv[1:]
    at = int(at)
    run = loop.run
    rank_only = os.environ.get("RANK_ONLY")

    def signal_self(step: int) -> None:
        if step == at and (rank_only is None or os.environ.get("RANK", "0") == rank_only):
            os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGINT)

    def run_with_fault(recipe, cfg, callbacks=None):
        if fault in ("sigterm", "sigint"):
            return run(recipe, cfg, loop.Callbacks(after_step=(signal_self,)))
        import accelerate

        save_state = accelerate.Accelerator.save_state

        def full_disk(self, output_dir=None, **kwargs):
            result = save_state(self, output_dir, **kwargs)
            if int(os.path.basename(str(output_dir)).split("-")[1].split(".")[0]) >= at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return result

        accelerate.Accelerator.save_state = full_disk
        return run(recipe, cfg, callbacks)

    loop.run = run_with_fault
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
