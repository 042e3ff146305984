"""Preemption: SIGUSR2 (SLURM's warning signal) and SIGTERM become a flag the step loop checks.

At the next step boundary the trainer writes a checkpoint and hands the signal back to the
handler that was there before: under submitit that is its own, which requeues the job
(hydra-submitit-launcher's `checkpoint()` resubmits the same overrides, and the job resumes
from its run dir); otherwise the default action ends the process.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preemption:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def install(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """Restore the previous handlers and deliver the signal to them; if one returns (submitit
        only logs SIGTERM), end the process anyway: its checkpoint is written. A rank that stops
        because another rank was signalled acts on SLURM's warning, SIGUSR2."""
        self.uninstall()
        signum = self.signum or signal.SIGUSR2
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, None)
        else:
            os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
