"""Who runs when: one run at a time (one GPU), a bounded line of waiting runs, and Stop per browser session."""

from __future__ import annotations

import threading
from collections import deque

from guidance.errors import ToolkitError


class ServerBusy(ToolkitError):
    """The line of waiting runs is full."""


def busy_message(waiting: int) -> str:
    """What a visitor beyond the line reads."""
    if waiting == 0:
        return "the server is busy with another run; try again shortly"
    return f"the server is busy: {waiting} run{'s are' if waiting > 1 else ' is'} waiting; try again shortly"


class RunQueue:
    """One run at a time, with at most `max_waiting` runs waiting behind it, first come first served."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._line: deque[object] = deque()  # tickets; the first one runs
        self._changed = threading.Condition()

    def join(self) -> object:
        """A ticket in the line, or ServerBusy (one line for the page) when the line is full."""
        with self._changed:
            if len(self._line) > self.max_waiting:
                raise ServerBusy(busy_message(self.waiting))
            ticket = object()
            self._line.append(ticket)
            return ticket

    def wait(self, ticket: object, timeout: float) -> int:
        """Wait up to `timeout` seconds for the ticket's turn; how many runs are still ahead of it (0: its turn)."""
        with self._changed:
            self._changed.wait_for(lambda: self._line[0] is ticket, timeout)
            return self._line.index(ticket)

    def leave(self, ticket: object) -> None:
        """Take the ticket out of the line (its run ended, or it stopped waiting)."""
        with self._changed:
            if ticket in self._line:
                self._line.remove(ticket)
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        """Whether a run holds the turn."""
        return bool(self._line)

    @property
    def waiting(self) -> int:
        """How many runs wait behind the running one."""
        return max(0, len(self._line) - 1)


class StopSignals:
    """One stop event per browser session, for the run that session has going (or waiting)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh event for a new run of the session."""
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def stop(self, session: str) -> bool:
        """Ask the session's run to stop; False when it has none."""
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        """Forget the run's event (unless a newer run replaced it)."""
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]
