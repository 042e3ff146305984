"""Metrics computed on the device reach the logger without making the host wait for it.

At a logging step the values are copied to the host asynchronously and written once the copy
is done, at a later logging step or at a flush (stage end, checkpoint, preemption), in order.
On a GPU, logging per-layer gradient norms every step then costs no host-device sync; on the
CPU the copy is immediate and nothing changes.
"""

from __future__ import annotations

from typing import Any

import torch


class DeferredMetrics:
    def __init__(self, logger: Any):
        self.logger = logger
        self.pending: list[tuple[dict, list[str], torch.Tensor, torch.cuda.Event | None]] = []

    def log(self, record: dict, keys: list[str], values: torch.Tensor) -> None:
        """Log `record` plus keys[i] = values[i] of a 1-d device tensor, as soon as it is on the host."""
        self.flush(wait=False)
        host = values.detach().float().to("cpu", non_blocking=True)
        event = None
        if values.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((record, keys, host, event))

    def flush(self, wait: bool = True) -> None:
        """Write every record whose values have arrived; with `wait`, wait for all of them."""
        while self.pending:
            record, keys, host, event = self.pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self.pending.pop(0)
            self.logger.log({**record, **dict(zip(keys, host.tolist(), strict=True))})
