"""CPU time that groups of processes spend over a stretch of a benchmark, read from /proc.

On a machine whose cores are all busy, throughput says how the CPU is shared out as much as
what a design costs; CPU time per unit of work says what it costs. Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
Pids = Callable[[], set[int]]


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (fields 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _ticks(pid: int) -> int:
    """User plus system CPU ticks of one process (all its threads); 0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def with_descendants(*roots: int) -> Pids:
    """The processes `roots` and every process they started (Ray's workers, say)."""

    def pids() -> set[int]:
        parents = _parents()
        found = set(roots)
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in found} - found
            found |= children
            grew = bool(children)
        return found

    return pids


def named(command: str) -> Pids:
    """Every process whose command name is `command` (`postgres`, `redis-server`)."""

    def pids() -> set[int]:
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == command:
                        found.add(int(entry.name))
                except OSError:
                    continue
        return found

    return pids


class CpuMeter:
    """CPU seconds each named group spent between start() and stop().

    A process that ends in between loses what it spent after start(); the groups measured
    here (servers, workers, database backends of a pool) live through the stretch."""

    def __init__(self, groups: dict[str, Pids]) -> None:
        self._groups = groups
        self._before: dict[str, dict[int, int]] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> None:
        self._before = {
            name: {pid: _ticks(pid) for pid in pids()} for name, pids in self._groups.items()
        }

    def stop(self) -> dict[str, float]:
        for name, pids in self._groups.items():
            before = self._before[name]
            spent = sum(_ticks(pid) - before.get(pid, 0) for pid in pids())
            self.seconds[name] = spent / TICKS_PER_SECOND
        return self.seconds

    def per_unit_ms(self, units: float) -> str:
        """ "name 0.62, ...; total 1.58" in ms of CPU per unit of work."""
        parts = [f"{name} {seconds * 1000 / units:.2f}" for name, seconds in self.seconds.items()]
        total = sum(self.seconds.values()) * 1000 / units
        return f"{', '.join(parts)}; total {total:.2f}"

    def total_ms(self, units: float) -> float:
        return sum(self.seconds.values()) * 1000 / units
