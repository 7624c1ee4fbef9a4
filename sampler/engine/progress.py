"""Progress bars for long runs: shown on a terminal, silent otherwise (tqdm)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["progress_bar", "ProgressBar"]


class ProgressBar:
    """A thin wrapper over tqdm that shows step, t, ESS and acceptance."""

    def __init__(self, bar: tqdm | None):
        self._bar = bar

    def advance(
        self,
        amount: float,
        *,
        step: int | None = None,
        t: float | None = None,
        ess: Tensor | None = None,
        info: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Move the bar by ``amount`` and refresh its statistics (cheap when disabled)."""
        if self._bar is None:
            return
        post: dict[str, str] = {}
        if step is not None:
            post["step"] = str(step)
        if t is not None:
            post["t"] = f"{t:.4f}"
        if ess is not None:
            post["ess"] = f"{float(ess.float().mean()):.2f}"
        if info and "acceptance" in info:
            post["acc"] = f"{float(info['acceptance'].float().mean()):.2f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(amount)


@contextmanager
def progress_bar(total: float | None, enabled: bool | None, desc: str) -> Iterator[ProgressBar]:
    """A bar over ``total`` units (annealing time 1.0 when ``total`` is None).

    ``enabled=None`` shows it only when standard error is a terminal.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield ProgressBar(None)
        return
    if total is None:
        bar = tqdm(
            total=1.0, desc=desc, unit="t", bar_format="{l_bar}{bar}| t={n:.3f} [{elapsed}{postfix}]", leave=False
        )
    else:
        bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    try:
        yield ProgressBar(bar)
    finally:
        bar.close()
