"""What the query listener may run, decided on ClickHouse's own parse of the query.

The listener is read-only and reads only the tracker's data. A check of the SQL text cannot
promise that (ClickHouse has ``#`` comments, ``$$`` strings, nested comments, scalar
functions that read files), so the query is parsed by ClickHouse itself - chDB's
``parseQueryToJSON``, which parses without running anything - and the parse is checked
against an allow-list:

- one statement: SELECT (with WITH, UNION, EXCEPT, ...), EXPLAIN of one, SHOW TABLES /
  DATABASES / SETTINGS, DESCRIBE TABLE, EXISTS, SHOW CREATE TABLE;
- every table read is in an allowed database (the tracker's) or one of ``SYSTEM_TABLES``
  (what clickhouse-connect and Grafana read when they connect), also on the right of ``IN``;
- of those, ``system.tables`` and ``system.databases`` hold the host's paths (where the data,
  and so ``DataDirectory``'s secrets, live): a query reading them names its columns - no
  ``*``, no ``COLUMNS(...)``, not as a whole on the right of ``IN`` - and names none of
  ``HIDDEN_COLUMNS`` (the names, engines and sizes a schema browser wants stay readable);
- no table function at all (``file()``, ``url()``, ``s3()``, ``remote()``, ``numbers()``, ...);
- no function of ``DENIED_FUNCTIONS`` (reading files, other tables by name, the network, the
  process), no user-defined function;
- no ``INTO OUTFILE``, no ``SETTINGS``, no query parameters, no syntax node the checker does
  not know (``NODE_TYPES``).

What runs is not the text the client sent but ClickHouse's own formatting of the checked
parse (``formatQueryFromJSON``), after making sure that formatting says the same as the
client's text (``formatQuery``): a single statement, exactly what was checked, whatever the
lexer tricks in the original. The store runs it with ``readonly = 1`` as well.

chDB runs as ``clickhouse-local``, where ``file()`` reads any path the process can read
(``user_files_path`` does not confine it: tried) and ClickHouse's access control cannot be
configured: this check is the guard. Behind it the reader sessions have ``readonly = 1``,
no ``Python()`` table function and no introspection functions (``EmbeddedStore._reader``). A
ClickHouse server store runs the same check (with chDB's parser, in this process) and its own
``readonly = 1``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field

from sfpltracker.store.errors import StoreError

# Tables of the ``system`` database clients read to connect and to browse the schema:
# clickhouse-connect reads ``system.settings``; Grafana's plugin the databases, tables and
# columns. No system table holding queries, users, logs or paths to secrets.
SYSTEM_TABLES = frozenset(
    {"one", "settings", "databases", "tables", "columns", "functions", "data_type_families"}
)
# Columns of those that show the host: paths on its disk (ClickHouse 18.16 to 26).
HIDDEN_COLUMNS = {
    "tables": frozenset({"data_path", "data_paths", "metadata_path"}),
    "databases": frozenset({"data_path", "metadata_path"}),
}
# Views over system.tables/columns that SQL tools (Grafana, BI tools) read.
METADATA_DATABASES = frozenset({"information_schema", "INFORMATION_SCHEMA"})

# Scalar functions that reach outside the query's tables: files (file; models and
# certificates loaded from files), other tables by a name in a string (joinGet, dictGet*,
# hasColumnInTable, which also connects to other hosts), the network (the ai* functions
# call an LLM provider), the process (introspection, sleep, the server log, Keeper), the host
# (its paths, kernel, disks).
# Compared in lower case; ``dict*`` and ``ai*`` by prefix, see ``_denied``.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "hascolumnintable",
        "catboostevaluate",
        "modelevaluate",
        "naivebayesclassifier",
        "naivebayesclassifierwithallprobs",
        "naivebayesclassifierwithprob",
        "showcertificate",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "sleep",
        "sleepeachrow",
        "logtrace",
        "generateserialid",
        # The host: where the data lives on disk (the path to DataDirectory's secrets), the
        # kernel's version, the disk's free space.
        "getserversetting",
        "getoskernelversion",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
        # The machine's name and the server's macros (shard/replica host names).
        "hostname",
        "fqdn",
        "fullhostname",
        "getmacro",
        "displayname",
    }
)
DENIED_PREFIXES = ("dict",)
AI_FUNCTION = re.compile(r"^ai[a-z]+$")  # aiGenerate, AIEmbed, ... (not e.g. "abs")

# Every kind of parse node a permitted query may contain. A node of any other kind (a
# query parameter, a SETTINGS clause, a statement other than the ones below) is refused,
# so a syntax added to ClickHouse later is refused until it is looked at.
NODE_TYPES = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ExplainQuery",
        "ShowTablesQuery",
        "ExpressionList",
        "Literal",
        "Identifier",
        "Function",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "Subquery",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsApplyTransformer",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformerReplacement",
        "OrderByElement",
        "InterpolateElement",
        "WithElement",
        "WindowDefinition",
        "WindowListElement",
        "SampleRatio",
    }
)
# Nodes that stand for every column of a table (or all matching a pattern).
STAR_NODES = frozenset(
    {
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
    }
)
STATEMENTS = frozenset(
    {"SelectWithUnionQuery", "SelectIntersectExceptQuery", "ExplainQuery", "ShowTablesQuery"}
)
SELECTS = frozenset({"SelectWithUnionQuery", "SelectIntersectExceptQuery"})
EXPLAIN_KINDS = frozenset(
    {
        "EXPLAIN",
        "EXPLAIN AST",
        "EXPLAIN SYNTAX",
        "EXPLAIN QUERY TREE",
        "EXPLAIN PLAN",
        "EXPLAIN PIPELINE",
        "EXPLAIN ESTIMATE",
    }
)
# Functions whose second argument may name a table: ``x IN db.t`` reads db.t.
IN_FUNCTIONS = frozenset(
    {
        "in",
        "notin",
        "globalin",
        "globalnotin",
        "nullin",
        "notnullin",
        "globalnullin",
        "globalnotnullin",
    }
)
# Statements chDB cannot give as JSON; their target (a table, a database) is checked by
# parsing it in a statement that can be: ``DESCRIBE TABLE x`` is checked as
# ``SELECT * FROM x``. The text after the prefix is ClickHouse's formatting, so it is the
# table expression and what may follow one (FORMAT, SETTINGS, INTO OUTFILE: refused there).
CHECKED_AS = {
    "DESCRIBE TABLE ": "SELECT * FROM ",
    "EXISTS TABLE ": "SELECT * FROM ",
    "EXISTS VIEW ": "SELECT * FROM ",
    "EXISTS DICTIONARY ": "SELECT * FROM ",
    "SHOW CREATE TABLE ": "SELECT * FROM ",
    "EXISTS DATABASE ": "SHOW TABLES FROM ",
}
ALLOWED = "SELECT, WITH, EXPLAIN, SHOW TABLES, SHOW DATABASES, DESCRIBE TABLE, EXISTS"
_BRACKETS = re.compile(r"[()\s]+")
FORMAT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# One call to chDB each: the query formatted on one line and parsed to JSON; the checked parse
# formatted back with and without its FORMAT clause.
PARSE = "formatQuerySingleLine({q:String}), parseQueryToJSON({q:String})"
SINGLE_LINE = "formatQuerySingleLine({q:String})"
FROM_JSON = (
    "formatQuerySingleLine(formatQueryFromJSON({a:String})), "
    "formatQuerySingleLine(formatQueryFromJSON({b:String}))"
)
BAD_ARGUMENTS = 36  # chDB's code for "this statement has no JSON form"
MAX_DEPTH = 2000  # nodes deep; ClickHouse's own max_parser_depth (1000) comes first


_parsers = threading.local()


def local_parser():
    """This thread's chDB session to parse with, for a store that has none (a ClickHouse
    server store). chDB is always installed; a session on no data directory costs little."""
    conn = getattr(_parsers, "conn", None)
    if conn is None:
        import chdb

        try:
            conn = chdb.connect(":memory:")
            conn.query("SET readonly = 1")
        except Exception as e:
            raise StoreError(f"no chDB session to check queries with: {e}") from None
        _parsers.conn = conn
    return conn


class QueryRefused(Exception):
    """The query is not one the listener runs; the message says why (answered 403)."""


@dataclass
class _Reads:
    """What one query's walk saw, for the rule of ``HIDDEN_COLUMNS``."""

    hidden: dict[str, frozenset[str]] = field(default_factory=dict)  # table -> its hidden
    star: str = ""  # the first ``*`` (or whole table after IN) seen
    names: set[str] = field(default_factory=set)  # every identifier's parts, lower case


@dataclass(frozen=True)
class Checked:
    sql: str  # what to run: ClickHouse's formatting of the checked parse, without FORMAT
    fmt: str | None  # the query's FORMAT clause, if it had one
    database: str  # the default database to run it in


def _escaped(text: str) -> str:
    """``text`` as a query parameter value (ClickHouse's escaped text format)."""
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )


def _store_error(exc: Exception) -> StoreError:
    """chDB's parse error, without the wrapping query it was found in."""
    text = str(exc)
    code = 0
    m = re.match(r"Code: (\d+)\.", text)
    if m:
        code = int(m.group(1))
    cut = text.find(": In scope SELECT ")
    if cut > 0:
        text = text[:cut] + "."
    return StoreError(text, code)


def _not_allowed(kind: str) -> str:
    return f"the query listener is read-only: {kind or 'this'} is not allowed (use {ALLOWED})"


def check_format(name: str) -> str:
    if not FORMAT_NAME.match(name):
        raise QueryRefused(f"bad output format {name[:64]!r}")
    return name


class QueryGuard:
    """Checks queries for one store; ``check`` runs on the calling (reader) thread with a
    chDB connection of that thread, and only parses and formats there."""

    def __init__(self, databases: set[str] | frozenset[str], default: str):
        self.databases = frozenset(databases)
        self.default = default
        self._denied_names: frozenset[str] | None = None  # read once, from system.functions

    # -- entry ------------------------------------------------------------------------------

    def check(self, conn, sql: str, database: str | None = None, *, rows: bool = True) -> Checked:
        """The statement to run for ``sql``; ``QueryRefused`` if it is not allowed,
        ``StoreError`` (ClickHouse's syntax error) if it does not parse. ``rows=False``: the
        statement answers no rows of the tables it names (DESCRIBE, EXISTS, SHOW CREATE)."""
        database = database or self.default
        if database not in self.databases:
            raise QueryRefused(
                f"database {database[:64]!r} is not readable here "
                f"(use {', '.join(sorted(self.databases))})"
            )
        self._load_denied(conn)
        try:
            canonical, parsed = self._call(conn, PARSE, q=sql)
        except StoreError as e:
            if e.code != BAD_ARGUMENTS:
                raise
            return self._check_by_proxy(conn, sql, database, str(e))
        try:
            tree = json.loads(parsed)
        except (ValueError, RecursionError):
            raise QueryRefused("the query is too deeply nested") from None
        if not isinstance(tree, dict) or tree.get("type") not in STATEMENTS:
            raise QueryRefused(
                _not_allowed(str(tree.get("type") or "") if isinstance(tree, dict) else "")
            )
        reads = self._walk(tree)
        if rows:
            _check_hidden(reads)
        fmt_node = tree.get("format_ast")
        fmt = check_format(str(fmt_node.get("name", ""))) if fmt_node else None
        # Run ClickHouse's formatting of the checked parse, once sure that it says the same
        # as the query sent: the parse kept every word the query has. (The JSON form does not
        # keep redundant parentheses - ``x IN (f(1))`` comes back as ``x IN f(1)`` - and the
        # tree, not its brackets, decides what is grouped with what.)
        with_format = json.dumps(tree)
        tree.pop("format_ast", None)
        formatted, run = self._call(conn, FROM_JSON, a=with_format, b=json.dumps(tree))
        if _BRACKETS.sub("", formatted) != _BRACKETS.sub("", canonical):
            raise QueryRefused("the query listener cannot check this query's syntax")
        return Checked(run, fmt, database)

    def _check_by_proxy(self, conn, sql: str, database: str, error: str) -> Checked:
        """A statement chDB has no JSON form for: DESCRIBE TABLE, EXISTS and SHOW CREATE TABLE
        are checked through the statement of ``CHECKED_AS``; anything else is not a read."""
        (canonical,) = self._call(conn, SINGLE_LINE, q=sql)
        for prefix, checked_as in CHECKED_AS.items():
            if canonical.startswith(prefix):
                inner = self.check(
                    conn, checked_as + canonical[len(prefix) :], database, rows=False
                )
                if not inner.sql.startswith(checked_as):
                    raise QueryRefused(f"{prefix.strip()} takes a table name here")
                return Checked(prefix + inner.sql[len(checked_as) :], inner.fmt, database)
        kind = re.search(r"type '([A-Za-z]+)", error)
        raise QueryRefused(_not_allowed(kind.group(1) if kind else canonical.split()[0]))

    # -- parse ------------------------------------------------------------------------------

    def _call(self, conn, expression: str, **texts: str) -> list[str]:
        """The row of ``SELECT expression``, the ``texts`` bound as ``{name:String}``
        parameters (never in the SQL)."""
        params = {name: _escaped(text) for name, text in texts.items()}
        try:
            result = conn.query(f"SELECT {expression}", "JSONCompactEachRow", params=params)
        except Exception as e:
            if "Multi-statements are not allowed" in str(e):
                raise QueryRefused(
                    "the query listener is read-only: one statement per request"
                ) from None
            raise _store_error(e) from None
        return json.loads(result.bytes())

    # -- the allow-list ---------------------------------------------------------------------

    def _walk(self, root: dict) -> _Reads:
        reads = _Reads()
        stack: list[tuple[dict | list, int]] = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise QueryRefused("the query is too deeply nested")
            if isinstance(node, list):
                stack.extend((child, depth + 1) for child in node)
                continue
            if not isinstance(node, dict):
                continue
            kind = node.get("type")
            if kind is not None:
                self._check_node(kind, node, reads)
            if kind == "Literal":
                continue  # a value: data, not syntax
            for key, value in node.items():
                if key == "settings" and kind == "ExplainQuery":
                    continue  # EXPLAIN's own options (header=1, ...): ClickHouse refuses others
                if isinstance(value, dict | list):
                    stack.append((value, depth + 1))
        return reads

    def _check_node(self, kind: str, node: dict, reads: _Reads) -> None:
        if kind not in NODE_TYPES:
            what = "SETTINGS" if kind == "SetQuery" else kind
            raise QueryRefused(f"{what} is not allowed in the query listener")
        if node.get("out_file") is not None or node.get("is_into_outfile_with_stdout"):
            raise QueryRefused("the query listener is read-only: INTO OUTFILE is not allowed")
        if kind == "TableExpression" and "table_function" in node:
            name = node["table_function"].get("name", "")
            raise QueryRefused(f"table functions are not allowed in the query listener ({name})")
        if kind in STAR_NODES:
            reads.star = reads.star or ("*" if "Asterisk" in kind else "COLUMNS(...)")
        if kind == "TableIdentifier":
            self._check_table(node.get("name_parts") or [node.get("name", "")], reads)
        elif kind == "Identifier":
            parts = node.get("name_parts") or str(node.get("name", "")).split(".")
            reads.names.update(str(part).lower() for part in parts)
        elif kind == "Function":
            name = str(node.get("name", ""))
            self._check_function(name)
            if name.lower() in IN_FUNCTIONS:
                args = (node.get("arguments") or {}).get("children") or []
                if len(args) == 2 and args[1].get("type") == "Identifier":
                    parts = args[1].get("name_parts") or [args[1].get("name", "")]
                    if self._check_table(parts, reads):
                        reads.star = reads.star or f"IN {'.'.join(parts)}"
        elif kind == "ColumnsApplyTransformer" and "func_name" in node:
            self._check_function(str(node["func_name"]))
        elif kind == "ExplainQuery":
            if node.get("kind") not in EXPLAIN_KINDS:
                raise QueryRefused(f"{node.get('kind')} is not allowed in the query listener")
            if (node.get("query") or {}).get("type") not in SELECTS:
                raise QueryRefused("EXPLAIN is allowed for a SELECT only")
        elif kind == "ShowTablesQuery" and "from" in node:
            self._check_database(str(node["from"].get("name", "")))

    def _check_table(self, parts: list[str], reads: _Reads) -> bool:
        """Refuses a table outside the allowed ones; True for one with ``HIDDEN_COLUMNS``."""
        if len(parts) == 1:
            return False  # the default database (an allowed one) or a WITH name
        database, table = str(parts[0]), str(parts[-1])
        if database == "system" and table in SYSTEM_TABLES and len(parts) == 2:
            if table in HIDDEN_COLUMNS:
                reads.hidden[table] = HIDDEN_COLUMNS[table]
                return True
            return False
        if database in METADATA_DATABASES and len(parts) == 2:
            return False
        self._check_database(database, f"{database}.{table}")
        return False

    def _check_database(self, database: str, what: str | None = None) -> None:
        if database not in self.databases:
            raise QueryRefused(
                f"{what or database} is not readable in the query listener "
                f"(tables of {', '.join(sorted(self.databases))} only)"
            )

    def _check_function(self, name: str) -> None:
        if name.lower() in (self._denied_names or DENIED_FUNCTIONS):
            raise QueryRefused(f"function {name} is not allowed in the query listener")
        lower = name.lower()
        if lower.startswith(DENIED_PREFIXES) or AI_FUNCTION.match(lower):
            raise QueryRefused(f"function {name} is not allowed in the query listener")

    def _load_denied(self, conn) -> None:
        """Add the aliases of denied functions and every user-defined function."""
        if self._denied_names is not None:
            return
        try:
            rows = conn.query(
                "SELECT name, alias_to, origin FROM system.functions", "TabSeparated"
            ).bytes()
        except Exception as e:
            raise _store_error(e) from None
        denied = set(DENIED_FUNCTIONS)
        for line in rows.decode("utf-8", "replace").splitlines():
            name, alias_to, origin = (line.split("\t") + ["", ""])[:3]
            if origin != "System" or alias_to.lower() in DENIED_FUNCTIONS:
                denied.add(name.lower())
        self._denied_names = frozenset(denied)


def _check_hidden(reads: _Reads) -> None:
    """A query reading a table with ``HIDDEN_COLUMNS`` names its columns, none of those.
    By name wherever it is (an alias, a lambda's parameter): a name of this query may be the
    column, and refusing a look-alike costs the analyst a rename."""
    if not reads.hidden:
        return
    tables = ", ".join(f"system.{t}" for t in sorted(reads.hidden))
    hidden = frozenset().union(*reads.hidden.values())
    if reads.star:
        raise QueryRefused(
            f"{reads.star} is not allowed on {tables} in the query listener: name the columns "
            f"({', '.join(sorted(hidden))} are not readable)"
        )
    named = sorted(reads.names & hidden)
    if named:
        raise QueryRefused(
            f"{', '.join(named)} of {tables} is not readable in the query listener "
            "(the host's paths)"
        )
