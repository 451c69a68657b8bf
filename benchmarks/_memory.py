"""Peak resident memory of a block of code, for the benchmark scripts."""

import ctypes
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
        self.start = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def added_mb(self):
        return (self.peak - self.start) / 2**20

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
