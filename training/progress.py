"""Training progress for runs whose output is a log file, not a terminal.

transformers' `ProgressCallback` draws a tqdm bar (with an ETA) on a terminal; redirected to a file, the bar's
carriage-return updates make one unreadable line, and with `--disable_tqdm` there is only a loss line per
`logging_steps`. `ProgressLineCallback` prints one plain line every `every` percent of the steps instead:

    peapod-train: step 40/200 (20%), 1m05s elapsed, ETA 4m20s, loss 3.2110

`peapod-train` uses the bar on a terminal and these lines otherwise (or when the bar is disabled).
"""

from __future__ import annotations

import sys
import time

from transformers import TrainerCallback


def format_seconds(seconds: float) -> str:
    """`3725` -> `1h02m05s`, `65` -> `1m05s`, `7` -> `7s`."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressLineCallback(TrainerCallback):
    """Print `prefix: step s/S (p%), elapsed, ETA, last loss` every `every` percent of `max_steps` (to `stream`)."""

    def __init__(self, every: float = 5.0, prefix: str = "peapod-train", stream=None):
        if not 0 < every <= 100:
            raise ValueError(f"every must be in (0, 100] percent, got {every}")
        self.every, self.prefix, self.stream = every, prefix, stream
        self.started = self.next_percent = None
        self.start_step = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.start_step = state.global_step  # a resumed run's ETA counts only the steps done in this process
        self.next_percent = self.every

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        if not state.max_steps or self.started is None or not state.is_world_process_zero:
            return
        percent = 100.0 * state.global_step / state.max_steps
        if percent + 1e-9 < self.next_percent and state.global_step != state.max_steps:
            return
        while self.next_percent <= percent + 1e-9:
            self.next_percent += self.every
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.start_step
        eta = format_seconds(elapsed / done * (state.max_steps - state.global_step)) if done else "?"
        line = (f"{self.prefix}: step {state.global_step}/{state.max_steps} ({percent:.0f}%), "
                f"{format_seconds(elapsed)} elapsed, ETA {eta}")
        if self.last_loss is not None:
            line += f", loss {self.last_loss:.4f}"
        print(line, file=self.stream or sys.stderr, flush=True)
