"""Cut a stream of log lines into the gzip parts of PROTOCOL.md "Logs". Pure: no I/O, no clock.

Theory of operation. Every part carries ``part_count``, so the count must be known before the
first part goes out. Two ways keep memory bounded by about one part whatever the log size:
spool the compressed parts to a temporary file, or read the source twice. We read twice:

1. a counting pass runs the lines through :func:`split_parts` and keeps only the part number
   (no compression, no buffering), stopping as soon as the count passes ``maxPartCount``;
2. a sending pass runs the same lines through the same split and :func:`gzip_parts`, which holds
   one part's compressed bytes and hands each part out as soon as it is complete.

Spooling would hold the whole compressed log on disk and send nothing until the end; the second
read costs one more pass over the source, which is cheap next to compression. The sources freeze
the time range before the first pass (an open ``till`` becomes "now") so both passes see the same
lines; :func:`pad_parts` keeps the announced count honest if a log rotates in between.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator, List, Tuple

#: gzip container (wbits 16 + 15), level 6: what ``gzip -6`` (gzip's default) writes.
_GZIP_WBITS = 31
_LEVEL = 6


def split_parts(lines: Iterable[bytes], max_part_size: int) -> Iterator[Tuple[int, bytes]]:
    """``(part number, piece)`` pairs, numbered from 1, each part at most ``max_part_size`` bytes.

    A part ends at a line boundary when the next line would not fit; a line longer than a part on
    its own is cut into ``max_part_size`` pieces (each starting a part) so no part overflows.
    """
    if max_part_size < 1:
        raise ValueError(f"max_part_size must be at least 1, got {max_part_size}")
    part, used = 1, 0
    for line in lines:
        if not line:
            continue
        if used and used + len(line) > max_part_size:
            part, used = part + 1, 0
        # Only a line that overflows an empty part gets here with used == 0: cut it.
        while len(line) > max_part_size:
            yield part, line[:max_part_size]
            line = line[max_part_size:]
            part += 1
        yield part, line
        used += len(line)


def count_parts(lines: Iterable[bytes], max_part_size: int, limit: int) -> int:
    """The number of parts the lines make (0 for none); stops at ``limit + 1`` so an oversized log
    is refused without reading it all."""
    count = 0
    for part, _ in split_parts(lines, max_part_size):
        count = part
        if count > limit:
            break
    return count


def _gzip(chunks: Iterable[bytes]) -> bytes:
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    data = [compressor.compress(chunk) for chunk in chunks]
    data.append(compressor.flush())
    return b"".join(data)


def gzip_parts(pieces: Iterable[Tuple[int, bytes]]) -> Iterator[Tuple[int, bytes]]:
    """``(part number, gzip data)`` for each part of :func:`split_parts`' output, as each completes.

    Holds one part's uncompressed pieces at most (``max_part_size`` bytes) plus its compressed form.
    """
    current = 0
    chunks: List[bytes] = []
    for part, piece in pieces:
        if part != current and chunks:
            yield current, _gzip(chunks)
            chunks = []
        current = part
        chunks.append(piece)
    if chunks:
        yield current, _gzip(chunks)


def pad_parts(parts: Iterable[Tuple[int, bytes]], part_count: int) -> Iterator[Tuple[int, bytes]]:
    """Exactly ``part_count`` parts numbered 1..N: the source's parts up to N, then empty gzip
    streams if the second pass came up short (the log rotated between the passes), because CM
    waits for every announced part."""
    sent = 0
    for part, data in parts:
        if part > part_count:
            break
        sent = part
        yield part, data
    for part in range(sent + 1, part_count + 1):
        yield part, _gzip(())
