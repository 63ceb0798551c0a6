"""Progress bars (tqdm, main process only) and metric logging as JSON lines.

:class:`MetricLogger` appends one JSON object per record to ``metrics.jsonl``; when a run resumes from
step ``s`` it first drops the records after ``s`` (they belong to the interrupted part that is about to be
redone), so the file of a resumed run reads like the file of an uninterrupted one.
:func:`plot_metrics` draws chosen keys against the step into a PNG (matplotlib), a grid of panels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ctxnets_shared.weights import atomic_write

__all__ = ["MetricLogger", "Progress", "plot_metrics", "read_metrics"]

T = TypeVar("T")


class Progress:
    """A tqdm bar when ``enabled`` (the main process) and tqdm is installed; else silent.

    Iterate it to advance once per item of ``iterable``, or call :meth:`update` from a loop of your own
    (e.g. a bar over optimizer steps that spans epochs).

    Args:
        iterable: what to iterate (may be None when driven by :meth:`update`).
        total: number of updates, if ``len(iterable)`` does not give it.
        desc: bar label.
        enabled: show the bar (pass ``info.is_main``).
        initial: steps already done (a resumed run's bar starts there).
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        total: int | None = None,
        desc: str = "",
        *,
        enabled: bool = True,
        initial: int = 0,
    ) -> None:
        self.iterable = iterable
        self._bar: Any = None
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True, leave=True)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this Progress has no iterable; drive it with update()")
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n``."""
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: float | str) -> None:
        """Show e.g. ``loss=0.53 lr=1e-3`` beside the bar."""
        if self._bar is not None:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
            self._bar.set_postfix(shown, refresh=False)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar (prints only on the enabled process)."""
        if self._bar is not None:
            self._bar.write(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics file (a torn last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricLogger:
    """Append metric records (dicts with a "step") to a JSON-lines file; main process only.

    Args:
        path: the ``.jsonl`` file.
        enabled: write at all (pass ``info.is_main``).
        resume_step: when resuming, records with a step above this are removed first; None starts a
            fresh file.
    """

    def __init__(self, path: str | os.PathLike[str], *, enabled: bool = True, resume_step: int | None = None):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = (
            [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            if resume_step is not None
            else []
        )
        with atomic_write(self.path, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def log(self, step: int, **metrics: Any) -> None:
        """Append ``{"step": step, **metrics}`` (floats rounded to 6 significant digits; NaN as null)."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float):
                v = None if not math.isfinite(v) else float(f"{v:.6g}")
            record[k] = v
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels: at most three side by side, four as 2 x 2."""
    cols = 2 if n == 4 else min(n, 3)
    return math.ceil(n / cols), cols


def plot_metrics(
    records: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    keys: Sequence[str],
    *,
    title: str = "",
) -> Path:
    """One panel per key (value against step), in a grid of up to three columns; PNG written atomically.

    ``records`` is a list of metric dicts or the path of a metrics ``.jsonl`` file; keys a record lacks
    are skipped for it, and a key no record has gets no panel (when none has any, the figure says so).
    Needs matplotlib. Both training commands write their ``metrics.png`` with it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if isinstance(records, (str, os.PathLike)):
        records = read_metrics(records)
    if not keys:
        raise ValueError("plot_metrics needs at least one key")
    series = {}
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
        if pts:
            series[key] = pts
    rows, cols = _grid(max(1, len(series)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (key, pts) in zip(flat, series.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if not series:
        flat[0].text(0.5, 0.5, f"no data for {', '.join(keys)}", ha="center", va="center")
        flat[0].set_axis_off()
    for ax in flat[max(1, len(series)) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return out
