"""Resident memory of one process over a measured part, from ``/proc/<pid>/status`` (Linux only).

``VmRSS`` is the process's resident set now, ``VmHWM`` its peak so far. Writing ``5`` to
``/proc/<pid>/clear_refs`` sets the peak back to the resident set of the moment, so that the
peak can be taken over the measured part alone; where the kernel refuses, the peak is the one
since the process started, and the figures say so. Without ``/proc`` nothing is measured: the
readings are ``None`` and the benchmarks print "not measured".

Used by bench/okta.py and bench/pipeline.py, and by bench/receiver.py, which sums the readings
of a server and its commit process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NOT_MEASURED = "not measured (no /proc/<pid>/status: Linux only)"


PARTS = {"RssAnon": "anon_kib", "RssFile": "file_kib", "RssShmem": "shmem_kib"}


def read_kib(pid: int | None = None) -> dict[str, int] | None:
    """``{"rss_kib": VmRSS, "peak_kib": VmHWM}`` of ``pid`` (default: this process), or None
    where they cannot be read; with the parts of VmRSS where the kernel gives them: anonymous
    memory (the heap), mapped files (libraries, memory-mapped databases) and shared memory."""
    try:
        status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return None
    found: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found["rss_kib" if key == "VmRSS" else "peak_kib"] = int(value.split()[0])
        elif key in PARTS:
            found[PARTS[key]] = int(value.split()[0])
    return found if "rss_kib" in found and "peak_kib" in found else None


def reset_peak(pid: int | None = None) -> bool:
    """Set ``pid``'s peak (VmHWM) back to its resident set now; False where that is refused."""
    try:
        Path(f"/proc/{pid or os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


class MemoryWatch:
    """Resident memory of one process (default: this one) over a measured part: ``start()`` at
    its beginning (the baseline; resets the peak where allowed), ``sample(done)`` along the way
    with the units of work done so far (events), ``stop(done)`` at its end."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.before: dict[str, int] | None = None
        self.peak_reset = False
        self.samples: list[tuple[int, int]] = []  # (work done, VmRSS KiB)

    def start(self) -> None:
        self.peak_reset = reset_peak(self.pid)
        self.before = read_kib(self.pid)

    def sample(self, done: int) -> None:
        reading = read_kib(self.pid)
        if reading is not None:
            self.samples.append((done, reading["rss_kib"]))

    def stop(self, done: int) -> dict[str, Any] | None:
        """The figures, or None where memory could not be read: resident memory at the start
        (the baseline) and at the end, the peak in between (or since the process started, see
        ``peak_since``), the growth, the after/before ratio, and the growth per 1,000 units of
        work over the second half (from the first sample at or past half the work to the end: a
        warm-up is left out, steady growth is not; None without a sample between half and three
        quarters of the work)."""
        after = read_kib(self.pid)
        if self.before is None or after is None:
            return None
        self.samples.append((done, after["rss_kib"]))
        before_kib, after_kib = self.before["rss_kib"], after["rss_kib"]
        peak_kib = max(after["peak_kib"], after_kib)
        figures: dict[str, Any] = {
            "rss_before_mib": mib(before_kib), "rss_after_mib": mib(after_kib),
            "peak_mib": mib(peak_kib),
            "peak_since": "baseline" if self.peak_reset else "process start",
            "growth_mib": mib(after_kib - before_kib),
            "ratio": round(after_kib / before_kib, 3),
            "peak_ratio": round(peak_kib / before_kib, 3),
            "work": done,
            # The resident set at the first sample at or past each tenth of the work.
            "rss_mib_by_work": [[n, mib(kib)] for n, kib in self._tenths(done)],
            "halfway": None, "growth_kib_per_1000_second_half": None,
            "rss_parts_mib": {
                when: {part.removesuffix("_kib"): mib(reading[part])
                       for part in PARTS.values() if part in reading}
                for when, reading in (("before", self.before), ("after", after))
            },
        }
        halfway = next(((n, kib) for n, kib in self.samples if n >= done / 2), None)
        if halfway is not None and halfway[0] <= done * 3 / 4 < done:  # else too short to tell
            figures["halfway"] = {"work": halfway[0], "rss_mib": mib(halfway[1])}
            figures["growth_kib_per_1000_second_half"] = round(
                (after_kib - halfway[1]) * 1000 / (done - halfway[0]), 1)
        return figures

    def _tenths(self, done: int) -> list[tuple[int, int]]:
        picked: list[tuple[int, int]] = []
        for tenth in range(1, 11):
            sample = next(((n, kib) for n, kib in self.samples if n >= done * tenth / 10), None)
            if sample is not None and sample not in picked:
                picked.append(sample)
        return picked
