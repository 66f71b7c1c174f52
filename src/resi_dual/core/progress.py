"""Progress reporting for long loops, without any user interface (docs/DESIGN.md §14).

A :class:`Progress` is a callable ``progress(description, total=None, **fields)`` returning a context
manager that yields ``step(n=1, **fields)``: advance by ``n`` and update the shown fields. Two
keywords are display hints an implementation may ignore: ``unit`` (show a rate, ``img`` → img/s) and
``keep`` (leave the finished display on screen). Stages
take ``progress=`` as ``True`` (the installed default), ``False``/``None`` (silent) or any
:class:`Progress`, and open their loops with :func:`task`. The rich bars live in
``resi_dual.report.progress``; the package top installs them as the default with :func:`use_default`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol, Union

Step = Callable[..., None]


class Progress(Protocol):
    def __call__(self, description: str, total: int | None = None, **fields) -> ContextManager[Step]: ...


@contextmanager
def silent(description: str, total: int | None = None, **fields) -> Iterator[Step]:
    """A :class:`Progress` that shows nothing."""
    yield lambda n=1, **f: None


_default: Progress = silent

ProgressArg = Union[bool, None, Progress]


def use_default(progress: Progress) -> None:
    """What ``progress=True`` means from now on (the package top installs the rich bars)."""
    global _default
    _default = progress


def resolve(progress: ProgressArg) -> Progress:
    """The :class:`Progress` behind a ``progress=`` argument."""
    if progress is True:
        return _default
    if not progress:
        return silent
    return progress


def task(progress: ProgressArg, description: str, total: int | None = None, **fields) -> ContextManager[Step]:
    """``with task(progress, "PCA", total=n) as step: … step(k)``: one progress display for one loop."""
    return resolve(progress)(description, total, **fields)
