"""Which of several cooperating processes this is (``accelerate launch``), on GPUs or CPUs."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["process_state"]


def process_state(device: torch.device | str | None = None) -> Any:
    """accelerate's ``PartialState`` for this process (one process without ``accelerate launch``).

    On a machine without GPUs (or for ``device="cpu"``) it asks for the multi-CPU (gloo) mode, so
    ``accelerate launch --multi_gpu --num_processes N`` (torchrun underneath) gives N cooperating
    processes instead of N copies of one: accelerate's default state ignores torchrun there."""
    from accelerate import PartialState

    if device is not None:
        cpu = torch.device(device).type == "cpu"
    else:
        cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return PartialState(cpu=cpu)
