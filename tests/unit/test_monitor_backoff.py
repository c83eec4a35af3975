"""monitor's back-off while the job's machine cannot be reached: the wait doubles up to
MAX_BACKOFF_S, and the first refresh that reads again brings it back to the interval."""

from __future__ import annotations

from types import SimpleNamespace

from hpcrun.monitor import MAX_BACKOFF_S, watch


class Refreshes:
    """Refreshes given in advance: None for one that read the machine, else the error."""

    def __init__(self, *connections: str | None, last: str = "SUCCEEDED"):
        self.snaps = [SimpleNamespace(state="RUNNING", connection=c) for c in connections]
        self.snaps.append(SimpleNamespace(state=last, connection=None))
        self.calls = 0

    def refresh(self):
        self.calls += 1
        return self.snaps[self.calls - 1]

    def events(self, snap):
        return []


class Quiet:
    def show(self, snap):
        pass

    def end(self, snap):
        pass

    def close(self):
        pass


def _waits(*connections: str | None, interval: float = 2.0) -> list[float]:
    waits: list[float] = []
    watch(Refreshes(*connections), Quiet(), interval=interval, sleep=waits.append)
    return waits


def test_the_wait_doubles_while_lost_up_to_the_cap_and_resets_once_read_again():
    lost = "cannot reach 127.0.0.1:22022: connection refused"
    waits = _waits(None, lost, lost, lost, lost, lost, lost, None, lost, None)
    assert MAX_BACKOFF_S == 30.0
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0,  # lost six times: capped
                     2.0,  # read again: the interval
                     4.0,  # lost again: the back-off starts over
                     2.0]


def test_a_long_outage_never_waits_longer_than_the_cap():
    waits = _waits(*["ssh: timed out"] * 40, interval=1.5)
    assert len(waits) == 40
    assert waits[:4] == [3.0, 6.0, 12.0, 24.0] and set(waits[4:]) == {MAX_BACKOFF_S}
