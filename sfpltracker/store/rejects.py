"""Rows a store refuses for their data: how a store tells them apart, finds them and counts them.

Shared by both stores. A batch refused for its *data* (a value ClickHouse cannot parse, a
value the client library cannot encode) will never go in as it is, and retrying it would block
every later batch. A batch refused because the *store* is in trouble (connection lost, disk
full, memory) must be retried as it is. A store raises ``DataRejected`` for the first kind and
``StoreError`` for the second; on ``DataRejected`` it calls ``bisect``, which inserts halves of
the batch again, down to the single rows that fail; those go to the dead-letter file
(``deadletter.py``) and are counted in ``sfpl_store_dead_letter_rows``.
"""

from __future__ import annotations

from collections.abc import Callable

# ClickHouse error codes that mean "this data", not "this server": the batch is split to find
# the rows that cause them. Everything else (network, memory, unknown table ...) is retried.
DATA_ERRORS = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF: parsing a value that is too short (toInt64(''))
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        128,  # TOO_LARGE_ARRAY_SIZE
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
        407,  # DECIMAL_OVERFLOW
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        469,  # VIOLATED_CONSTRAINT
        632,  # UNEXPECTED_DATA_AFTER_PARSED_VALUE
        675,  # CANNOT_PARSE_IPV4
        676,  # CANNOT_PARSE_IPV6
        691,  # UNKNOWN_ELEMENT_OF_ENUM
    }
)


def one_line(exc: BaseException) -> str:
    """A server error in one line, without its stack trace."""
    text = " ".join(str(exc).split())
    for cut in (" Stack trace:", ", Stack trace"):
        if cut in text:
            text = text[: text.index(cut)]
    return text.rstrip(".") + "."


class DataRejected(Exception):
    """An insert refused for its data; ``reason`` and ``code`` are what the store said."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason = reason
        self.code = code


Dead = list[tuple[dict, str, int]]  # (row, reason, code) of each row set aside


def bisect(
    rows: list[dict],
    error: DataRejected,
    insert: Callable[[list[dict], str], None],
    dead: Dead,
    label: str = "",
) -> None:
    """Find the rows of ``rows`` (refused together with ``error``) that the store refuses.

    ``insert(half, label)`` inserts one half again and raises ``DataRejected`` if it is refused
    (any other exception ends the search: the store is in trouble, the batch is retried whole).
    ``label`` names the half by its place in the search ("0", "01", ...): the same rows get
    the same label every time the batch is searched, so a store can derive an insert token
    from it. A single refused row goes to ``dead`` with its reason.
    """
    if len(rows) == 1:
        dead.append((rows[0], error.reason, error.code))
        return
    middle = len(rows) // 2
    for side, half in enumerate((rows[:middle], rows[middle:])):
        where = f"{label}{side}"
        try:
            insert(half, where)
        except DataRejected as e:
            bisect(half, e, insert, dead, where)


def dead_letter_family(counts: dict[str, int]):
    """The ``sfpl_store_dead_letter_rows`` counter (rows per table set aside)."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(
        "sfpl_store_dead_letter_rows",
        "Rows the store rejected and kept in DataDirectory/deadletter/",
        labels=["table"],
    )
    for table, n in sorted(counts.items()):
        family.add_metric([table], n)
    return family
