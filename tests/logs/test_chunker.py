"""The pure chunker: part sizes, numbering, cut lines, early stop, gzip validity."""

from __future__ import annotations

import gzip

from aos_sm.agent.logs.chunker import count_parts, gzip_parts, pad_parts, split_parts


def _parts(lines: list, size: int) -> dict:
    parts: dict = {}
    for part, piece in split_parts(lines, size):
        parts.setdefault(part, []).append(piece)
    return {part: b"".join(pieces) for part, pieces in parts.items()}


def test_lines_fill_parts_up_to_the_limit_and_a_part_ends_at_a_line_boundary() -> None:
    lines = [b"%05d\n" % n for n in range(10)]  # 6 bytes each
    parts = _parts(lines, 20)
    assert list(parts) == [1, 2, 3, 4]
    assert [len(data) for data in parts.values()] == [18, 18, 18, 6]
    assert b"".join(parts.values()) == b"".join(lines)


def test_a_line_longer_than_a_part_is_cut_and_no_part_overflows() -> None:
    lines = [b"short\n", b"x" * 25 + b"\n", b"tail\n"]
    parts = _parts(lines, 10)
    assert all(len(data) <= 10 for data in parts.values())
    assert list(parts) == list(range(1, len(parts) + 1))
    assert parts[1] == b"short\n"
    assert parts[2] == b"x" * 10
    assert b"".join(parts.values()) == b"".join(lines)


def test_a_line_of_exactly_a_part_fills_one_part() -> None:
    assert _parts([b"a" * 9 + b"\n", b"b\n"], 10) == {1: b"a" * 9 + b"\n", 2: b"b\n"}


def test_counting_stops_one_past_the_limit_without_reading_the_rest() -> None:
    read = []

    def lines():  # type: ignore[no-untyped-def]
        for n in range(1000):
            read.append(n)
            yield b"0123456789"

    assert count_parts(lines(), 10, limit=5) == 6
    assert len(read) == 6
    assert count_parts([], 10, limit=5) == 0


def test_each_gzip_part_decompresses_to_its_lines() -> None:
    lines = [b"line %d\n" % n for n in range(100)]
    parts = list(gzip_parts(split_parts(lines, 64)))
    assert [part for part, _ in parts] == list(range(1, len(parts) + 1))
    decompressed = [gzip.decompress(data) for _, data in parts]
    assert all(0 < len(data) <= 64 for data in decompressed)
    assert b"".join(decompressed) == b"".join(lines)


def test_padding_keeps_the_announced_count_when_the_source_shrank() -> None:
    parts = list(pad_parts(iter([(1, gzip.compress(b"a"))]), 3))
    assert [part for part, _ in parts] == [1, 2, 3]
    assert [gzip.decompress(data) for _, data in parts] == [b"a", b"", b""]
    grown = list(pad_parts(iter([(1, b"x"), (2, b"y"), (3, b"z")]), 2))
    assert [part for part, _ in grown] == [1, 2]
