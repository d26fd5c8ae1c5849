"""SIGTERM/SIGUSR1 as a "save and stop" request, from the first instant of a training process.

SLURM sends SIGTERM (preemption, scancel) or the pre-time-out signal at any moment, also while the process is
still importing torch or reading its inputs. `eldistill.cli` installs the handler before any heavy import;
the training loops enter `StopFlag()`, which then shares the flag already set, so a signal during start-up
ends the process with exit 3 ("requeue me") like one during training, never with -15 or -10.
Deliberately light (no torch): it is imported before anything else.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """`with StopFlag() as stop:` ... `stop.signum` is the first stop signal received, or None."""

    _active: StopFlag | None = None  # the flag whose handlers are installed (at most one per process)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if StopFlag._active is not None:
            return StopFlag._active  # installed earlier (by the CLI): the signals it has seen count
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
            # a parent may start us with the signals blocked, to hold them until this handler exists
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            StopFlag._active = self
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        if StopFlag._active is self:
            for s, old in self._old.items():
                signal.signal(s, old)
            self._old.clear()
            StopFlag._active = None
