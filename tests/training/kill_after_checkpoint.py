"""Run a training example, SIGKILLed right after its checkpoint of step N: the kill-and-resume tests' fault.

``python tests/training/kill_after_checkpoint.py N SCRIPT [script flags]``. The fault is a loop callback
(``loop.Callbacks.after_checkpoint``) added around the example's own ``loop.run`` call; production code has no hook.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from diffusers_npu.training import loop


def main() -> None:
    kill_step, script, *flags = sys.argv[1:]
    run = loop.run

    def kill(step: int, _path) -> None:
        if step == int(kill_step):
            os.kill(os.getpid(), signal.SIGKILL)

    def run_with_fault(recipe, cfg, callbacks=None):
        return run(recipe, cfg, loop.Callbacks(after_checkpoint=(kill,)))

    loop.run = run_with_fault
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
