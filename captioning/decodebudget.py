"""A process-wide bound on image decoding: how many images decode at once and how many pixels they hold.

Streamlit serves every session from threads of one process; without it, N visitors cost N decodes of memory.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# A decode holds 10-20 bytes per pixel at its peak (the file's mode, the RGB copy, a progressive JPEG's
# coefficients), so 48 Mpixels in flight is at most about 1 GB: one 40-Mpixel image, or a few phone photos, at once.
DECODE_PIXELS = 48_000_000
DECODE_SLOTS = 4  # decodes are CPU-bound: more at once than cores makes each slower, not the total faster
DECODE_WAIT_S = 30.0  # how long a decode waits for room before its visitor is told to try again
# glibc gives each thread its own heap and keeps the pages freed there: 8 sessions decoding 40 Mpixels in turn still
# held 3.4 GB (0.6 GB for one) until the freed pages of a large decode were handed back. COCO photos (< 0.5 Mpixel)
# are not worth the call.
TRIM_PIXELS = 4_000_000
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
    _malloc_trim = None


class DecodeBusyError(RuntimeError):
    """No room to decode within the wait; the caller says so and the visitor can try again."""


class DecodeBudget:
    """At most `slots` decodes and `pixels` pixels in flight; a decode waits up to `wait_s` for room.

    A reservation ends with its `hold` block, or, inside `scope()` on the same thread, with the scope, so a caller
    can keep the decoded image counted while it captions and shrinks it.
    """

    def __init__(self, pixels: int = DECODE_PIXELS, slots: int = DECODE_SLOTS, wait_s: float = DECODE_WAIT_S):
        self.pixels, self.slots, self.wait_s = pixels, slots, wait_s
        self._cond = threading.Condition()
        self._local = threading.local()
        self.running = self.in_flight = 0
        self.peak_running = self.peak_pixels = self.refused = 0  # the most seen at once, for tests and benchmarks

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Reserve a slot and `pixels` (an image larger than the whole budget waits for all of it)."""
        need = min(max(int(pixels), 1), self.pixels)
        with self._cond:
            room = self._cond.wait_for(
                lambda: self.running < self.slots and self.in_flight + need <= self.pixels, self.wait_s
            )
            if not room:
                self.refused += 1
                raise DecodeBusyError("the server is busy decoding other images; try again in a moment")
            self.running, self.in_flight = self.running + 1, self.in_flight + need
            self.peak_running = max(self.peak_running, self.running)
            self.peak_pixels = max(self.peak_pixels, self.in_flight)
        kept = getattr(self._local, "kept", None)
        if kept is not None:
            kept.append(need)
            yield
            return
        try:
            yield
        finally:
            self._release(need)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Keep this thread's reservations made inside the block until it ends. Decode one image per scope: a
        second would wait for room the first still holds."""
        outer, self._local.kept = getattr(self._local, "kept", None), []
        try:
            yield
        finally:
            kept, self._local.kept = self._local.kept, outer
            for need in kept:
                self._release(need)

    def _release(self, need: int) -> None:
        with self._cond:
            self.running, self.in_flight = self.running - 1, self.in_flight - need
            self._cond.notify_all()
        if need >= TRIM_PIXELS and _malloc_trim is not None:
            _malloc_trim(0)

    def reset_peaks(self) -> None:
        with self._cond:
            self.peak_running, self.peak_pixels, self.refused = self.running, self.in_flight, 0


# One budget for the process, as the memory it protects is the process's (a lock is module state for the same reason).
DECODES = DecodeBudget()
