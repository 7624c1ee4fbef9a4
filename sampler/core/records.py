"""A run's per-step statistics: one :class:`StepStats` per stage, or a :class:`StepBlock` per block.

Annealing runs record one :class:`StepStats` per stage. A fused segment of MCMC chain iterations
(``compile=True``) runs hundreds of iterations in one call. A :class:`StepStats` per iteration
(an object, a dict, two or three tensor views) costs a few microseconds to create, against the
12-30 of a compiled iteration of four chains on a small target, and about 1.3 kB for as long as
the result lives, so such a segment records one :class:`StepBlock` holding its iterations'
statistics stacked (docs/benchmarks.md, "Chains' statistics in blocks"). :class:`StepRecords`, what
``Result.steps`` holds, reads both as one sequence of :class:`StepStats`, expanding blocks into
rows only when rows are asked for; :meth:`StepRecords.stacked` (``Result.stats``) stacks them
without the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast, overload

import attrs
import torch
from torch import Tensor

__all__ = ["STEP_COUNTS", "STEP_FIELDS", "StepBlock", "StepRecords", "StepStats", "as_step_records", "last_step"]

#: The per-replica fields of a step's statistics, and its counts.
STEP_FIELDS, STEP_COUNTS = ("t", "ess", "log_Z_increment"), ("target_evals", "grad_evals", "nonfinite")

#: Where stacked statistics go: they are records for reports and plots, kept on the host (never
#: torch's default device).
_HOST = torch.device("cpu")


@attrs.frozen
class StepStats:
    """Statistics of one annealing stage (or one MCMC iteration).

    Attributes:
        step: stage index (1 for the first stage).
        t: annealing time of each replica ``(R,)`` at the end of the stage (replicas choose their
            own adaptive times; a replica that reached 1 stays there while the others finish).
        ess: normalized Kish ESS per replica ``(R,)`` after reweighting, before resampling.
        log_Z_increment: log normalizer increment per replica ``(R,)`` (zeros for MCMC).
        target_evals: target log-density evaluations in this stage (one per point); the
            initial evaluation at t = 0 belongs to no stage, so these sum to
            ``Result.n_target_evals`` minus R x N.
        grad_evals: gradient evaluations in this stage.
        nonfinite: NaN/+inf log densities the target returned in this stage (those points got
            zero weight or were rejected).
        info: per-step statistics reported by the steps, e.g. ``acceptance`` and ``step_size``
            ``(R,)``, ``resampled`` ``(R,)``.
    """

    step: int
    t: Tensor
    ess: Tensor
    log_Z_increment: Tensor
    target_evals: int
    grad_evals: int
    nonfinite: int
    info: Mapping[str, Tensor] = attrs.field(factory=dict)


@attrs.frozen
class StepBlock:
    """The statistics of K consecutive steps, stacked: what K :class:`StepStats` would hold.

    Attributes:
        first: the first step's index (its :attr:`StepStats.step`); the others follow by one.
        t, ess, log_Z_increment: ``(K, R)``, row k the step's :class:`StepStats` field.
        target_evals, grad_evals, nonfinite: ``(K,)`` int64.
        info: each ``(K, R)`` (or ``(K, ...)``), row k the step's ``info`` entry.
    """

    first: int
    t: Tensor
    ess: Tensor
    log_Z_increment: Tensor
    target_evals: Tensor
    grad_evals: Tensor
    nonfinite: Tensor
    info: Mapping[str, Tensor] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        k = self.t.shape[0]
        fields = {"ess": self.ess, "log_Z_increment": self.log_Z_increment, "target_evals": self.target_evals}
        fields.update(grad_evals=self.grad_evals, nonfinite=self.nonfinite, **self.info)
        wrong = {name: tuple(v.shape) for name, v in fields.items() if v.shape[:1] != (k,)}
        if wrong:
            raise ValueError(f"a StepBlock of {k} steps needs each field's first dimension {k}, got {wrong}")

    def __len__(self) -> int:
        return self.t.shape[0]

    def rows(self) -> list[StepStats]:
        """The block as one :class:`StepStats` per step (views of its tensors)."""
        counts = zip(self.target_evals.tolist(), self.grad_evals.tolist(), self.nonfinite.tolist())
        return [self._row(k, n) for k, n in enumerate(counts)]

    def last(self) -> StepStats:
        """The last step's :class:`StepStats`."""
        k = len(self) - 1
        return self._row(k, (int(self.target_evals[k]), int(self.grad_evals[k]), int(self.nonfinite[k])))

    def _row(self, k: int, counts: tuple[int, int, int]) -> StepStats:
        """Step ``k``'s :class:`StepStats`, given its ``(target_evals, grad_evals, nonfinite)``."""
        info = {key: v[k] for key, v in self.info.items()}
        return StepStats(self.first + k, self.t[k], self.ess[k], self.log_Z_increment[k], *counts, info)


Record = StepStats | StepBlock


def last_step(record: Record) -> StepStats:
    """The record's last step: the :class:`StepStats` itself, or a block's :meth:`StepBlock.last`."""
    return record.last() if isinstance(record, StepBlock) else record


class StepRecords(Sequence[StepStats]):
    """A run's per-step statistics as a sequence of :class:`StepStats` (``Result.steps``).

    Built from the records a run appended, :class:`StepStats` and :class:`StepBlock` in step
    order; a block's rows are created the first time any row is read. :meth:`stacked` stacks
    the statistics over steps without creating them.
    """

    __slots__ = ("_records", "_rows", "_len")

    def __init__(self, records: Iterable[Record] = ()):
        self._records: tuple[Record, ...] = tuple(records)
        self._rows: tuple[StepStats, ...] | None = None
        self._len = sum(len(r) if isinstance(r, StepBlock) else 1 for r in self._records)

    @property
    def records(self) -> tuple[Record, ...]:
        """What the run appended: :class:`StepStats` and :class:`StepBlock` in step order."""
        return self._records

    def _expanded(self) -> tuple[StepStats, ...]:
        if self._rows is None:
            self._rows = tuple(s for r in self._records for s in (r.rows() if isinstance(r, StepBlock) else (r,)))
        return self._rows

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> StepStats: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[StepStats, ...]: ...
    def __getitem__(self, index: int | slice) -> StepStats | tuple[StepStats, ...]:
        return self._expanded()[index]

    def __iter__(self) -> Iterator[StepStats]:
        return iter(self._expanded())

    def __repr__(self) -> str:
        blocks = sum(isinstance(r, StepBlock) for r in self._records)
        return f"StepRecords({self._len} steps, {blocks} blocks)"

    def chunks(self, name: str, info: bool = False) -> list[tuple[Tensor | None, int]]:
        """One statistic over the steps, a block or a run of :class:`StepStats` at a time, without rows.

        ``name`` is a :class:`StepStats` field (``step`` included), or an ``info`` key with
        ``info=True``. Per chunk ``(values, k)``: its k steps' values ``(k, ...)`` in their own
        dtype and device (the integer fields int64), or ``None`` where its steps lack the key.
        """
        out: list[tuple[Tensor | None, int]] = []
        run: list[Tensor | int | None] = []  # consecutive StepStats' values, all present or all absent

        def flush() -> None:
            if run:
                first = run[0]
                if first is None:
                    out.append((None, len(run)))
                elif isinstance(first, Tensor):
                    out.append((torch.stack(cast(list[Tensor], run)), len(run)))
                else:
                    out.append((torch.tensor(run, dtype=torch.int64, device=_HOST), len(run)))
                run.clear()

        for r in self._records:
            if isinstance(r, StepBlock):
                flush()
                k = len(r)
                if info:
                    out.append((r.info.get(name), k))
                elif name == "step":
                    out.append((torch.arange(r.first, r.first + k, device=_HOST), k))
                else:
                    out.append((getattr(r, name), k))
                continue
            value = r.info.get(name) if info else getattr(r, name)
            if run and (run[0] is None) != (value is None):
                flush()
            run.append(value)
        flush()
        return out

    def stacked(self) -> dict[str, Tensor]:
        """The statistics stacked over the K steps, on the CPU.

        ``step``, ``target_evals``, ``grad_evals``, ``nonfinite`` ``(K,)`` int64; ``t``,
        ``ess``, ``log_Z_increment`` and each ``info`` key ``(K, R)`` float64, NaN where a step
        did not report the key. Empty without steps.
        """
        if not self._records:
            return {}

        def column(chunks: list[tuple[Tensor | None, int]], dtype: torch.dtype) -> Tensor:
            shape = next(v.shape[1:] for v, _ in chunks if v is not None)
            parts = [torch.full((k, *shape), math.nan, device=_HOST) if v is None else v.detach() for v, k in chunks]
            return torch.cat([v.to(_HOST, dtype) for v in parts])

        out = {name: column(self.chunks(name), torch.int64) for name in ("step", *STEP_COUNTS)}
        out.update({name: column(self.chunks(name), torch.float64) for name in STEP_FIELDS})
        for key in sorted({k for r in self._records for k in r.info}):
            out[key] = column(self.chunks(key, info=True), torch.float64)
        return out


def as_step_records(steps: Iterable[Record]) -> StepRecords:
    """``steps`` as :class:`StepRecords` (itself if it already is one): ``Result.steps``' converter."""
    return steps if isinstance(steps, StepRecords) else StepRecords(steps)
