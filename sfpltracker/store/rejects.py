"""Rows a store refuses for their data: how a store tells them apart, finds them and counts them.

Shared by both stores. A batch refused for its *data* (a value ClickHouse cannot parse, a
value the client library cannot encode) will never go in as it is, and retrying it would block
every later batch. A batch refused because the *store* is in trouble (connection lost, disk
full, memory) must be retried as it is. A store raises ``DataRejected`` for the first kind and
``StoreError`` for the second; on ``DataRejected`` it calls ``bisect``, which inserts halves of
the batch again, down to the single rows that fail; those go to the dead-letter file
(``deadletter.py``) and are counted in ``sfpl_store_dead_letter_rows``.

Which kind an error is, is decided by behaviour (``refused_for_data``): ClickHouse has hundreds
of error codes and new versions add more (chDB refuses a batch mixing many JSON types with a
150-level array with ``TOO_DEEP_AST``, a code no list here had), so a code that is neither a
known data error nor a known outage makes the store probe itself. A store that answers the probe
while refusing the rows is refusing the rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# ClickHouse error codes that mean "this data", not "this server": the batch is split to find
# the rows that cause them. Everything else (network, memory, unknown table ...) is retried.
# With their names: what a log line says of a refused row (``reason_class``).
DATA_ERRORS: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    32: "ATTEMPT_TO_READ_AFTER_EOF",  # parsing a value that is too short (toInt64(''))
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    128: "TOO_LARGE_ARRAY_SIZE",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    376: "CANNOT_PARSE_UUID",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW",
    441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    467: "CANNOT_PARSE_BOOL",
    469: "VIOLATED_CONSTRAINT",
    632: "UNEXPECTED_DATA_AFTER_PARSED_VALUE",
    675: "CANNOT_PARSE_IPV4",
    676: "CANNOT_PARSE_IPV6",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}


# ClickHouse error codes that mean "this store, now" - resources, files, network, the table's
# state, a cancelled query - whatever a probe says: a row refused with one of them may well go
# in later (MEMORY_LIMIT_EXCEEDED passes once other queries finish), so the batch is retried
# as it is and nothing is dead-lettered for them.
OUTAGE_ERRORS = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE (reading a file or a socket)
        60,  # UNKNOWN_TABLE
        74,  # CANNOT_READ_FROM_FILE_DESCRIPTOR
        75,  # CANNOT_WRITE_TO_FILE_DESCRIPTOR
        76,  # CANNOT_OPEN_FILE
        77,  # CANNOT_CLOSE_FILE
        81,  # UNKNOWN_DATABASE
        87,  # CANNOT_SEEK_THROUGH_FILE
        88,  # CANNOT_TRUNCATE_FILE
        95,  # CANNOT_READ_FROM_SOCKET
        96,  # CANNOT_WRITE_TO_SOCKET
        107,  # FILE_DOESNT_EXIST
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        173,  # CANNOT_ALLOCATE_MEMORY
        201,  # QUOTA_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        204,  # CANNOT_FSYNC
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        218,  # TABLE_IS_DROPPED
        225,  # NO_ZOOKEEPER
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        244,  # UNEXPECTED_ZOOKEEPER_ERROR
        252,  # TOO_MANY_PARTS
        254,  # NO_ACTIVE_REPLICAS
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS
        289,  # REPLICA_IS_NOT_IN_QUORUM
        290,  # LIMIT_EXCEEDED
        291,  # DATABASE_ACCESS_DENIED
        294,  # CANNOT_WRITE_TO_FILE
        297,  # SHARD_HAS_NO_CONNECTIONS
        319,  # UNKNOWN_STATUS_OF_INSERT
        364,  # RECEIVED_ERROR_TOO_MANY_REQUESTS
        384,  # PART_IS_TEMPORARILY_LOCKED
        394,  # QUERY_WAS_CANCELLED
        411,  # PTHREAD_ERROR
        415,  # ALL_REPLICAS_LOST
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        473,  # DEADLOCK_AVOIDED
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
        574,  # DISTRIBUTED_TOO_MANY_PENDING_BYTES
        586,  # CANNOT_CREATE_FILE
        641,  # CANNOT_APPEND_TO_FILE
        677,  # THREAD_WAS_CANCELED
        735,  # QUERY_WAS_CANCELLED_BY_CLIENT
        738,  # PART_IS_LOCKED
        749,  # TCP_CONNECTION_LIMIT_REACHED
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION: Poco's file and network errors (18.16: "Access to file denied")
    }
)


# Outages reported under a generic code, told by how the message starts (where the rows'
# values cannot be: a message quoting a value must never turn a data error into an outage):
# a memory limit chDB met while reading the Arrow batch ("Code: 800. DB::Exception: Python data
# handling Query memory limit exceeded: ..."), a filesystem error (ClickHouse 25: "Code: 1001.
# DB::Exception: std::__1::filesystem::filesystem_error: filesystem error: in
# create_directories: Operation not permitted [...]" for a table directory it cannot write).
OUTAGE_MESSAGE = re.compile(
    r"Code: \d+\.\s+DB::Exception:\s+(?:Python data handling )?"
    r"(?:(?:\w+ )?memory limit (?:\([\w ]+\) )?exceeded|std::(?:\w+::)*filesystem_error)",
    re.IGNORECASE,
)


def refused_for_data(code: int, message: str, store_answers: Callable[[], bool]) -> bool:
    """Whether an insert the store refused with ``code`` (and ``message``) was refused for its
    rows.

    A known data error is; a known outage (a code, or how the message starts) is not. Anything else (a code neither list has, a
    generic ``STD_EXCEPTION``, an error without a code) is decided by ``store_answers()``, the
    store's probe of itself right after the failure (a query, and for chDB a file created in
    each table's directory): if the store works and still refused these rows, the rows are
    the trouble and the batch is searched for them; if the probe fails too, it is an outage
    and the batch is retried as it is. The probe runs again for every half that fails, so an
    outage that starts during a search ends the search and nothing is set aside for it.
    """
    if code in DATA_ERRORS:
        return True
    if code in OUTAGE_ERRORS or OUTAGE_MESSAGE.match(message):
        return False
    return store_answers()


def one_line(exc: BaseException) -> str:
    """A server error in one line, without its stack trace."""
    text = " ".join(str(exc).split())
    for cut in (" Stack trace:", ", Stack trace"):
        if cut in text:
            text = text[: text.index(cut)]
    return text.rstrip(".") + "."


# How a reason written by a store's own client code starts ("not sent: ArrowInvalid: ...",
# "not sent: Code: 53. ...", "not sent: column n (Int32): ..."): the exception's type, the
# code or the column, before any value.
_NOT_SENT = re.compile(r"not sent: (?:Code: (\d+)\.|([A-Za-z_]\w*):|column (\w+) \()")


def reason_class(reason: str, code: int) -> str:
    """What a log line may say of why a row was refused: its error code (and the name of a
    known data error) or the client library's exception type, never the message itself.

    Messages quote the refused value (``Cannot parse JSON object here: {...}``), and a row's
    values may be personal data: the log keeps the class, the dead-letter file (mode 0600,
    where the row is anyway) the whole reason.
    """
    if code:
        name = DATA_ERRORS.get(code)
        return f"code {code} {name}" if name else f"code {code}"
    m = _NOT_SENT.match(reason)
    if m is None:
        return "unclassified"
    code_, kind, column = m.groups()
    return f"not sent: code {code_}" if code_ else f"not sent: {kind or 'column ' + column}"


def reason_classes(dead: Dead) -> str:
    """The distinct classes of ``dead`` rows, for one log line (``reason_class``)."""
    return ", ".join(sorted({reason_class(reason, code) for _, reason, code in dead}))


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
