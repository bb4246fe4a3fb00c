"""Bounded resources under random input (issue 12): a real gateway from config.json takes
20,000 mixed requests with random ``params`` keys and types, garbage and good events
interleaved (``bench/soak.py``). Its own memory (``RssAnon``) stays within 400 MB, its
descriptors within 2,000, and every acknowledged good event is stored exactly once.

Before the bounds, one ``events`` part held ~10,000 files, the process ran out of descriptors
("Too many open files"), acknowledged events were not stored, RSS passed 1 GB and RssAnon
reached 679 MB. The issue's goal is RSS <= 600 MB; RSS also counts the pages of chDB's ~1 GB
library mapped from the page cache, which depend on the machine, not on the gateway: 401-495
MB at start with the same code (a freshly installed venv maps ~100 MB more), peaks of 619-757
MB. So the test asserts the process's own memory, and prints RSS for the record
(docs/resources.md "Not met yet").
"""

from __future__ import annotations

from bench.soak import report, run

MAX_ANON_MB = 400
MAX_FDS = 2000


def test_random_params_keep_memory_and_descriptors_bounded(tmp_path):
    lines: list[str] = []
    result = run(tmp_path, requests=20_000, log=lines.append)
    report(result, log=lines.append, every=10)
    summary = "\n".join(lines)
    print(summary)  # the curve, in the test's output

    assert result.acked_good, summary
    assert not result.missing, summary
    assert not result.duplicated, summary
    assert not result.errors, summary
    assert result.max_anon_mb <= MAX_ANON_MB, summary
    assert result.max_fds <= MAX_FDS, summary
