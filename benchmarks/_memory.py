"""Peak resident memory of a block of code, for the benchmark scripts."""

import ctypes
import math
import platform
import resource
import threading
import time

_LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


class PeakMemory:
    """Peak resident memory added while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed memory back so the baseline is honest
        self.start = self.peak = self._measure()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._measure())

    @property
    def added_mb(self):
        return (self.peak - self.start) / 2**20

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._measure())
            time.sleep(0.002)

    @staticmethod
    def _measure():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
            "fordblks keepcost"
        ).split()
    ]


_MALLINFO2 = getattr(_LIBC, "mallinfo2", None)
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _Mallinfo2


class AllocatedPeak(PeakMemory):
    """Peak of the bytes allocated through malloc (in use, not retained free
    memory) added while the block runs, sampled every 2 ms; NaN without
    glibc's ``mallinfo2``."""

    @staticmethod
    def _measure():
        if _MALLINFO2 is None:
            return math.nan
        info = _MALLINFO2()
        return info.uordblks + info.hblkhd
