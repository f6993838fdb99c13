"""A piece of work run on a thread of its own, whose outcome is collected later."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """Run ``work`` on a daemon thread; :meth:`result` waits and returns or raises its outcome
    (e.g. exact row counts taken on a second connection while a dump or restore streams)."""

    def __init__(self, work: Callable[[], T], name: str = "background"):
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            self._result = work()
        except BaseException as exc:  # re-raised by result() on the caller's thread
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
