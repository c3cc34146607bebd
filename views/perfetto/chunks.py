"""The micromegas chunking rule (`ChunkSender`), applied to whole runs of writes at once.

micromegas appends every write to a buffer and emits the buffer as a chunk as soon as it holds at
least `threshold` bytes; `flush()` emits whatever is buffered (nothing when empty, so chunks are never
empty). Each packet is two writes, its framing (`0x0A` + varint length) then its body, so a chunk can
end right after a packet's framing. `ChunkBuffer.write_run` reproduces this for a run of writes given
as their end offsets, without a Python step per write: between two flushes the threshold can only
fire if the bytes written since the previous flush reach `threshold`, which (with flushes every 10
spans) happens only for long strings; those segments are cut with a binary search per chunk.
"""

from __future__ import annotations

import numpy as np


class ChunkBuffer:
    """micromegas' `ChunkSender`: writes are buffered and cut into chunks by size and by flushes."""

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"chunk threshold must be positive, given {threshold}")
        self._threshold = threshold
        self._pending = b""

    def write(self, data: bytes) -> list[bytes]:
        """One write: the chunk it completes, if the buffer reaches the threshold."""
        self._pending += data
        return self.flush() if len(self._pending) >= self._threshold else []

    def flush(self) -> list[bytes]:
        """The pending bytes as one chunk (none if nothing is pending)."""
        if not self._pending:
            return []
        chunk, self._pending = self._pending, b""
        return [chunk]

    def write_run(self, data: bytes, write_ends: np.ndarray, flush_ends: np.ndarray) -> list[bytes]:
        """Many writes: `data` is their concatenation, `write_ends` the offset in `data` where each
        write ends (sorted, the last one `len(data)`), `flush_ends` the write ends followed by a
        flush (sorted, distinct). Returns the completed chunks; the rest stays buffered."""
        base = len(self._pending)
        stream = self._pending + data
        cuts = self._cut_offsets(write_ends.astype(np.int64) + base, flush_ends.astype(np.int64) + base)
        starts = [0, *cuts][:-1]
        chunks = [stream[start:cut] for start, cut in zip(starts, cuts, strict=True)]
        self._pending = stream[cuts[-1] :] if cuts else stream
        return chunks

    def _cut_offsets(self, ends: np.ndarray, flushes: np.ndarray) -> list[int]:
        """Stream offsets where chunks end, given write ends and sorted flush points (the buffer
        starts at offset 0)."""
        segment_starts = np.concatenate(([0], flushes[:-1]))
        long_segments = np.flatnonzero(flushes - segment_starts >= self._threshold)
        threshold_cuts = [
            self._threshold_cuts(ends, int(segment_starts[index]), int(flushes[index]))
            for index in long_segments.tolist()
        ]
        tail_start = int(flushes[-1]) if len(flushes) else 0
        threshold_cuts.append(self._threshold_cuts(ends, tail_start, int(ends[-1]) if len(ends) else 0))
        if not any(len(cuts) for cuts in threshold_cuts):
            return flushes.tolist()
        # A threshold cut can fall on a flush point; that flush then finds the buffer empty.
        return np.unique(np.concatenate([flushes, *threshold_cuts])).tolist()

    def _threshold_cuts(self, ends: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Cuts the threshold makes among writes ending in (start, stop], the buffer empty at start."""
        cuts = []
        while True:
            index = int(np.searchsorted(ends, start + self._threshold, side="left"))
            if index == len(ends) or ends[index] > stop:
                return np.array(cuts, dtype=np.int64)
            start = int(ends[index])
            cuts.append(start)
