"""Progress bars: the bar protocol, the default tqdm factory, and ``attach_progress_bar``.

A trainer method decorated with :func:`attach_progress_bar` receives a :class:`Progress` and
calls ``progress.step()`` per iteration. Only world rank 0 draws; under Ray its factory sends
the counts to the driver, which draws the one bar (``raytrainer.runners.ray_train``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ProgressBar(Protocol):
    """What a progress-bar factory returns (``tqdm`` fits).

    A bar that also has tqdm's ``set_postfix(mapping, refresh=False)`` shows the latest metrics.
    """

    def update(self, n: int = 1) -> Any:
        """Advance by ``n`` iterations."""

    def close(self) -> Any:
        """Finish the bar."""


ProgressBarFactory = Callable[..., ProgressBar]
"""Called as ``factory(total=..., initial=..., desc=...)``."""


def tqdm_progress_bar(total: int, initial: int = 0, desc: str = "") -> ProgressBar:
    """Default progress-bar factory: a ``tqdm`` bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


def show_metrics(bar: ProgressBar | None, metrics: Mapping[str, float]) -> None:
    """Show ``metrics`` as the bar's postfix, when the bar has one (tqdm's ``set_postfix``)."""
    set_postfix = getattr(bar, "set_postfix", None)
    if set_postfix is not None:
        set_postfix({name: f"{value:.4g}" for name, value in metrics.items()}, refresh=False)


class Progress:
    """The progress context handed to a method decorated with :func:`attach_progress_bar`.

    Parameters
    ----------
    bar : ProgressBar or None
        The run's bar (``None`` off rank 0 or without a bar).
    on_step : Callable[[ProgressBar | None], None] or None
        Called after every step with the bar: the trainer logs its metrics live from here.
    """

    def __init__(
        self,
        bar: ProgressBar | None,
        on_step: Callable[[ProgressBar | None], None] | None = None,
    ) -> None:
        self._bar = bar
        self._on_step = on_step

    def step(self, n: int = 1) -> None:
        """Advance the run's progress bar by ``n`` iterations (and log metrics when due)."""
        if self._bar is not None:
            self._bar.update(n)
        if self._on_step is not None:
            self._on_step(self._bar)


def attach_progress_bar(num_iterations_func: Callable[[Any], int]) -> Callable[[F], F]:
    """Give a trainer method the run's progress bar.

    The decorated method receives a keyword argument ``progress`` (a :class:`Progress`) and
    calls ``progress.step()`` per iteration. ``num_iterations_func(trainer)`` says how many
    iterations the method runs; :meth:`Trainer.get_total_num_iterations` sums these over all
    decorated methods, so one bar covers the whole run. The bar starts at
    ``trainer.iteration``, so a resumed run's bar starts where it left off. Only rank 0 draws.
    Every ``settings.log_period`` iterations a step also sends the recorded metrics to W&B and
    to the bar's postfix.

    Parameters
    ----------
    num_iterations_func : Callable[[Trainer], int]
        Returns the number of iterations of the decorated method.
    """

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            on_step = getattr(self, "_after_step", None)
            if self._progress_bar is not None:  # nested: share the outer bar
                progress = Progress(self._progress_bar, on_step)
                return func(self, *args, progress=progress, **kwargs)
            factory = self.settings.progress_bar_factory
            if factory is None or not self.settings.is_rank_zero:
                return func(self, *args, progress=Progress(None, on_step), **kwargs)
            self._progress_bar = factory(
                total=self.get_total_num_iterations(), initial=self.iteration, desc=self.run_id
            )
            try:
                progress = Progress(self._progress_bar, on_step)
                return func(self, *args, progress=progress, **kwargs)
            finally:
                self._progress_bar.close()
                self._progress_bar = None

        wrapper._num_iterations_func = num_iterations_func  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def total_iterations(trainer: Any) -> int:
    """Sum the iteration counts of ``trainer``'s methods decorated with ``attach_progress_bar``."""
    total = 0
    for name in dir(type(trainer)):
        count = getattr(getattr(type(trainer), name, None), "_num_iterations_func", None)
        if count is not None:
            total += int(count(trainer))
    return total
