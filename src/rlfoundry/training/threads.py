"""How many CPU threads torch uses (``training.num_threads``, ``--threads``).

torch's default is one intra-op thread per core. The matrices of a small model are too small
to gain from more than one, and on a machine whose cores are busy the extra threads mostly
wait for each other: 6 DPO steps of ``builtin:tiny`` took 3.1 s with 1 thread and 27 s with 2
on a shared 2-core machine (docs/running.md has the figures). So on CPU the default is
one thread; on CUDA the CPU does little of the work and torch's default is kept. Set more
threads for a large model on a machine whose cores are free.
"""

from __future__ import annotations

import torch

from rlfoundry.errors import ConfigError


def resolve_threads(requested: int | None, device: torch.device | str) -> int:
    """The thread count to use: ``requested``, or the default for ``device`` (1 on CPU,
    torch's current setting elsewhere)."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {requested!r}")
        return requested
    return 1 if torch.device(device).type == "cpu" else torch.get_num_threads()


def apply_threads(requested: int | None, device: torch.device | str) -> int:
    """Set torch's intra-op thread count for this process (see :func:`resolve_threads`);
    return it."""
    threads = resolve_threads(requested, device)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
