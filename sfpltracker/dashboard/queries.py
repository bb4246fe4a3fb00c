"""The dashboard's reads: filters from the query string, one parameterised SELECT per figure.

Nothing the client sends becomes SQL text: every value is a ClickHouse query parameter
(``{name:Type}``) and the only text put into a statement is the store's database name and
fixed fragments chosen here. What is counted (docs/dashboard.md):

- the *traffic* figures count client events without bots (``server = 0 AND bot = 0``), the
  same events the derived tables (``hits``, ``referrers``, ``outcomes``) are made from, so a
  page reads a derived table when no segment filter (source/medium/campaign, country, device)
  is set and one keyed by the segment columns otherwise (the overview, campaigns and
  countries ``dash_segments``; engagement and entry/exit ``dash_session_segs``; pages and
  referrers ``dash_page_segs``; devices ``dash_device_segs``; goals' enames and outcomes
  ``dash_goals``; the funnel always ``dash_funnel``), with equal answers;
- a page view is an event with a ``url``; a session is a ``sid``, a bounce a session of one
  event, its duration the time between its first and last event;
- a referrer on the event's own host (``hosts``: hhash -> host name) is not a referral;
- ``host`` is the host the event was sent to (``hostname``; ``hhash`` in the derived tables);
- short-link clicks are server events (``rid`` set), bots excluded;
- revenue reads ``payments`` (FINAL: an updated payment counts once) and ``ltvu``; consent
  reads ``agreed`` (every decision) and ``jurisdictions``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sfpltracker.ingest.ids import short_hash

SEGMENTS = ("source", "medium", "campaign", "country", "device")
MAX_TEXT = 256
MAX_DAYS = 3660
MAX_STEPS = 8
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
TS = "DateTime64(3, 'UTC')"
TS_S = "DateTime('UTC')"  # in seconds: dash_funnel
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BadFilter(ValueError):
    """A filter the dashboard cannot use (answered 400 with the reason)."""


@dataclass(frozen=True)
class Filters:
    start: date  # first day, inclusive
    end: date  # last day, inclusive
    host: str = ""
    source: str = ""
    medium: str = ""
    campaign: str = ""
    country: str = ""
    device: str = ""
    limit: int = 10

    @property
    def segmented(self) -> bool:
        return any(getattr(self, name) for name in SEGMENTS)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> Filters:
        """The period of the same length just before."""
        return replace(
            self,
            start=self.start - timedelta(days=self.days),
            end=self.start - timedelta(days=1),
        )

    def applied(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        for name in ("host", *SEGMENTS):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


def parse_filters(args: dict[str, str], today: date) -> Filters:
    """Filters from the query string (``from``/``to`` as YYYY-MM-DD, both inclusive; default:
    the last 30 days up to today)."""
    end = _day(args.get("to", ""), "to") or today
    start = _day(args.get("from", ""), "from") or end - timedelta(days=29)
    if start > end:
        raise BadFilter("'from' is after 'to'")
    if (end - start).days >= MAX_DAYS:
        raise BadFilter(f"the date range is longer than {MAX_DAYS} days")
    values: dict[str, Any] = {}
    for name in ("host", *SEGMENTS):
        value = args.get(name, "").strip()
        if len(value) > MAX_TEXT:
            raise BadFilter(f"'{name}' is longer than {MAX_TEXT} characters")
        values[name] = value
    limit = args.get("limit", "10")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise BadFilter("'limit' must be a whole number from 1 to 100")
    return Filters(start=start, end=end, limit=int(limit), **values)


def _day(text: str, name: str) -> date | None:
    if not text:
        return None
    if not _DAY.match(text):
        raise BadFilter(f"'{name}' must be a date YYYY-MM-DD")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"'{name}' is not a date") from None
    # The previous period of a range (up to MAX_DAYS) must still be a day ClickHouse has.
    if not 1980 <= day.year <= 2100:
        raise BadFilter(f"'{name}' must be a day from 1980 to 2100")
    return day


def _ts(day: date) -> str:
    return f"{day.isoformat()} 00:00:00.000"


class Query:
    """A statement and its parameters, built from fixed fragments."""

    def __init__(self, sql: str, params: dict[str, Any]):
        self.sql = sql
        self.params = params


def event_conditions(
    f: Filters,
    *,
    client_only: bool = True,
    dated: bool = True,
    start: date | None = None,
    filtered: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The WHERE conditions on ``events`` for ``f`` (start may reach back further); with
    ``filtered``, on a table of ``events``' columns holding client events without bots only
    (``dash_funnel``), so without the bot and server conditions."""
    parts = [] if filtered else ["bot = 0"]
    params: dict[str, Any] = {}
    if client_only and not filtered:
        parts.append("server = 0")
    if dated:
        parts.append(f"created_at >= {{start:{TS}}} AND created_at < {{end:{TS}}}")
        params["start"] = _ts(start or f.start)
        params["end"] = _ts(f.end + timedelta(days=1))
    if f.host:
        parts.append("hostname = {host:String}")
        params["host"] = f.host
    for name in SEGMENTS:
        value = getattr(f, name)
        if value:
            parts.append(f"{name} = {{{name}:String}}")
            params[name] = value
    return " AND ".join(parts), params


def derived_conditions(
    f: Filters, date_column: str, segments: bool = False
) -> tuple[str, dict[str, Any]]:
    """The WHERE conditions on a derived table keyed by ``hhash`` and a Date column; with
    ``segments``, on its segment columns too (``dash_segments``)."""
    parts = [f"{date_column} >= {{start_day:Date}} AND {date_column} <= {{end_day:Date}}"]
    params: dict[str, Any] = {"start_day": f.start.isoformat(), "end_day": f.end.isoformat()}
    if f.host:
        parts.append("hhash = {hhash:String}")
        params["hhash"] = short_hash(f.host)
    for name in SEGMENTS if segments else ():
        value = getattr(f, name)
        if value:
            parts.append(f"{name} = {{{name}:String}}")
            params[name] = value
    return " AND ".join(parts), params


def bucket(f: Filters) -> str:
    """Hours for a range of two days or less, else days."""
    return "hour" if f.days <= 2 else "day"


def buckets(f: Filters) -> list[str]:
    """Every bucket of the range, so a chart shows the empty ones as zero."""
    start = datetime(f.start.year, f.start.month, f.start.day, tzinfo=UTC)
    if bucket(f) == "hour":
        return [
            (start + timedelta(hours=h)).strftime("%Y-%m-%d %H:00:00") for h in range(f.days * 24)
        ]
    return days(f)


def days(f: Filters) -> list[str]:
    """Every day of the range (the per-day figures: link clicks, revenue)."""
    return [(f.start + timedelta(days=d)).isoformat() for d in range(f.days)]


# -- the figures -----------------------------------------------------------------------------


def totals_table(f: Filters) -> str:
    """The per-day totals: per host (``dash_totals``), or per host and combination of segment
    values (``dash_segments``, schema/094_dashboard_segments.sql) for a segment filter."""
    return "dash_segments" if f.segmented else "dash_totals"


def overview(db: str, f: Filters) -> Query:
    """Visitors, sessions, events and page views of this period and the one before."""
    prev = f.previous()
    where, params = derived_conditions(replace(f, start=prev.start), "day", segments=True)
    params["cur"] = f.start.isoformat()
    sql = f"""
SELECT if(day >= {{cur:Date}}, 'current', 'previous') AS period,
       toUInt32(uniqCombinedMerge(14)(visitors)) AS visitors,
       toUInt32(uniqCombinedMerge(14)(sessions)) AS sessions,
       toUInt32(sum(events)) AS events, toUInt32(sum(pageviews)) AS pageviews
FROM {db}.{totals_table(f)} WHERE {where}
GROUP BY period"""
    return Query(sql, params)


# With a segment filter the per-session figures group a range's session rows by (sid, day):
# over 30 days of a filter as wide as device=Mobile (~380 K sessions of 10M events) that
# passed the reader's 96 MiB. Sessions are per day, so the range is asked in parts of days,
# each grouping its own sessions, and the parts' counts add up.
SESSION_DAYS_PER_PART = 7


def day_parts(f: Filters) -> list[Filters]:
    """``f``'s range in consecutive parts of at most ``SESSION_DAYS_PER_PART`` days."""
    parts, start = [], f.start
    while start <= f.end:
        end = min(f.end, start + timedelta(days=SESSION_DAYS_PER_PART - 1))
        parts.append(replace(f, start=start, end=end))
        start = end + timedelta(days=1)
    return parts


def engagement(db: str, f: Filters) -> Query:
    """Sessions of one event (bounces) and the summed time from each session's first to last
    event, per ``period``. A session is a sid's events of one day on one host
    (``dash_sessions``, schema/091_dashboard_sessions.sql): without a segment filter its rows
    are read with FINAL, one per session, for this period and the one before. With one, a
    session is a sid's events of one day that have the segment, of any host, summed from its
    rows per segment combination (``dash_session_segs``, schema/095), this period only: the
    caller asks for each part of days of both periods on its own (``day_parts``) and adds
    them up."""
    if f.segmented:
        # Not by host: with the host in the key the grouping took 2x the time (a String).
        where, params = derived_conditions(f, "day", segments=True)
        sessions = f"""(
    SELECT 'current' AS period, sum(events) AS events, min(first_at) AS first_at,
           max(last_at) AS last_at
    FROM {db}.dash_session_segs WHERE {where}
    GROUP BY sid, day
)"""
    else:
        where, params = derived_conditions(replace(f, start=f.previous().start), "day")
        params["cur"] = f.start.isoformat()
        sessions = f"""(
    SELECT if(day >= {{cur:Date}}, 'current', 'previous') AS period, events, first_at, last_at
    FROM {db}.dash_sessions FINAL WHERE {where}
)"""
    sql = f"""
SELECT period, toUInt32(count()) AS sessions, toUInt32(countIf(events = 1)) AS bounces,
       toUInt64(sum(dateDiff('second', first_at, last_at))) AS duration_total
FROM {sessions}
GROUP BY period"""
    return Query(sql, params)


def timeseries(db: str, f: Filters) -> Query:
    if bucket(f) == "day":
        where, params = derived_conditions(f, "day", segments=True)
        sql = f"""
SELECT toString(day) AS t, toUInt32(uniqCombinedMerge(14)(visitors)) AS visitors,
       toUInt32(sum(pageviews)) AS pageviews
FROM {db}.{totals_table(f)} WHERE {where}
GROUP BY t ORDER BY t"""
        return Query(sql, params)
    where, params = event_conditions(f)
    step = "toStartOfHour" if bucket(f) == "hour" else "toStartOfDay"
    fmt = "%Y-%m-%d %H:00:00" if bucket(f) == "hour" else "%Y-%m-%d"
    sql = f"""
SELECT formatDateTime({step}(created_at), '{fmt}') AS t, toUInt32(uniq(vid)) AS visitors,
       toUInt32(countIf(url != '')) AS pageviews
FROM {db}.events WHERE {where}
GROUP BY t ORDER BY t"""
    return Query(sql, params)


def _by_dim(db: str, f: Filters, dim: str, name: str) -> Query:
    """``name``, visitors and events per value of one dimension from the rollup."""
    where, params = derived_conditions(f, "day")
    params["limit"] = f.limit
    sql = f"""
SELECT value AS {name}, toUInt32(uniqMerge(visitors)) AS visitors, toUInt32(sum(events)) AS events
FROM {db}.dash_daily WHERE {where} AND dim = '{dim}'
GROUP BY value ORDER BY visitors DESC, events DESC, value LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def realtime(db: str, f: Filters) -> Query:
    where, params = event_conditions(f, dated=False)
    sql = f"""
SELECT toUInt32(uniq(vid)) AS visitors FROM {db}.events
WHERE {where} AND created_at >= now64(3, 'UTC') - INTERVAL 5 MINUTE"""
    return Query(sql, params)


def top_pages(db: str, f: Filters) -> Query:
    if f.segmented:
        where, params = derived_conditions(f, "day", segments=True)
        sql = f"""
SELECT value AS url, toUInt32(sum(events)) AS pageviews FROM {db}.dash_page_segs
WHERE dim = 'page' AND {where}
GROUP BY url ORDER BY pageviews DESC, url LIMIT {{limit:UInt32}}"""
    else:
        where, params = derived_conditions(f, "date")
        sql = f"""
SELECT url, toUInt32(sum(total)) AS pageviews FROM {db}.hits WHERE {where}
GROUP BY url ORDER BY pageviews DESC, url LIMIT {{limit:UInt32}}"""
    params["limit"] = f.limit
    return Query(sql, params)


def entry_exit(db: str, f: Filters, part: bool = False) -> Query:
    """Each session's first and last page (by time, then url; a session as for
    ``engagement``): the (time, url) pairs of ``dash_sessions`` FINAL, or with a segment
    filter the least and greatest (time + url) key of a session's rows in
    ``dash_session_segs`` (16 digits of time, then the url). With ``part``, every url's
    count (a part of days, ``day_parts``: the caller adds the parts up and keeps the top)."""
    if f.segmented:
        where, params = derived_conditions(f, "day", segments=True)
        pages = f"""(
    SELECT substring(min(entry), 17) AS entry_url, substring(max(exit), 17) AS exit_url
    FROM {db}.dash_session_segs WHERE {where}
    GROUP BY sid, day HAVING entry_url != ''
)"""
    else:
        where, params = derived_conditions(f, "day")
        # a session-day without a page holds the sentinel (time, ''): not a page
        pages = f"""(
    SELECT entry.2 AS entry_url, exit.2 AS exit_url
    FROM {db}.dash_sessions FINAL WHERE {where} AND entry_url != ''
)"""
    params["limit"] = f.limit
    limit = "" if part else " LIMIT {limit:UInt32} BY kind"
    # Both counts in one read of the sessions, each grouping its own column (an ARRAY JOIN
    # of the two into (kind, url) rows took ~2x the CPU: ~290 vs ~160 ms without a filter).
    sql = f"""
SELECT if(grouping(entry_url) = 0, 'entry', 'exit') AS kind,
       if(grouping(entry_url) = 0, entry_url, exit_url) AS url, toUInt32(count()) AS sessions
FROM {pages}
GROUP BY GROUPING SETS ((entry_url), (exit_url))
ORDER BY kind, sessions DESC, url{limit}"""
    return Query(sql, params)


REFERRER = "if(domain({c}) != '', domain({c}), {c})"
# A host as Plausible compares a referrer with the site: without a leading "www."
SITE = "if(startsWith({c}, 'www.'), substring({c}, 5), {c})"


def _not_own_host(db: str, referrer: str) -> str:
    """The condition that a referring domain is not the host its event was sent to.

    Internal navigation (a page whose referrer is a page of the same site) is not a referral
    (Plausible and Umami leave it out too); without this the site's own hosts lead the figure.
    Compared case-insensitively and, as Plausible does, without a leading "www." on either side
    (www.example.com referring to example.com is internal); another tracked host
    (blog.example.com referring to example.com) is a referral. ``hosts`` maps each hhash to
    its host name. Filtering each row doubled the figure's time on the bench (~60 -> ~120 ms
    without a segment filter), less than grouping by host and domain first (~150 ms)."""
    own = f"SELECT hhash, {SITE.format(c='lower(hostname)')} FROM {db}.hosts"
    return f"(hhash, {SITE.format(c=f'lower({referrer})')}) NOT IN ({own})"


def referrers(db: str, f: Filters) -> Query:
    if f.segmented:
        # the view stored each event's referring domain as the expression below makes it
        where, params = derived_conditions(f, "day", segments=True)
        sql = f"""
SELECT value AS referrer, toUInt32(sum(events)) AS events FROM {db}.dash_page_segs
WHERE dim = 'referrer' AND {where} AND {_not_own_host(db, "value")}
GROUP BY referrer ORDER BY events DESC, referrer LIMIT {{limit:UInt32}}"""
    else:
        where, params = derived_conditions(f, "date")
        sql = f"""
SELECT {REFERRER.format(c="url")} AS referrer, toUInt32(sum(total)) AS events
FROM {db}.referrers WHERE {where} AND {_not_own_host(db, "referrer")}
GROUP BY referrer ORDER BY events DESC, referrer LIMIT {{limit:UInt32}}"""
    params["limit"] = f.limit
    return Query(sql, params)


def campaigns(db: str, f: Filters) -> Query:
    if not f.segmented:
        where, params = derived_conditions(f, "day")
        params["limit"] = f.limit
        sql = f"""
SELECT splitByChar('\\t', value)[1] AS source, splitByChar('\\t', value)[2] AS medium,
       splitByChar('\\t', value)[3] AS campaign,
       toUInt32(uniqMerge(visitors)) AS visitors, toUInt32(sum(events)) AS events
FROM {db}.dash_daily WHERE {where} AND dim = 'campaign'
GROUP BY value ORDER BY visitors DESC, events DESC, source, medium, campaign
LIMIT {{limit:UInt32}}"""
        return Query(sql, params)
    where, params = derived_conditions(f, "day", segments=True)
    params["limit"] = f.limit
    sql = f"""
SELECT source, medium, campaign, toUInt32(uniqCombinedMerge(14)(visitors)) AS visitors,
       toUInt32(sum(events)) AS events
FROM {db}.dash_segments WHERE {where} AND (source != '' OR medium != '' OR campaign != '')
GROUP BY source, medium, campaign
ORDER BY visitors DESC, events DESC, source, medium, campaign LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def countries(db: str, f: Filters) -> Query:
    if not f.segmented:
        return _by_dim(db, f, "country", "country")
    where, params = derived_conditions(f, "day", segments=True)
    params["limit"] = f.limit
    sql = f"""
SELECT toString(country) AS country, toUInt32(uniqCombinedMerge(14)(visitors)) AS visitors,
       toUInt32(sum(events)) AS events
FROM {db}.dash_segments WHERE {where}
GROUP BY country ORDER BY visitors DESC, events DESC, country LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def devices(db: str, f: Filters) -> Query:
    """Devices, browsers and operating systems (bots are excluded by every figure); with a
    segment filter from ``dash_device_segs`` (schema/097), a row per combination of them."""
    if not f.segmented:
        where, params = derived_conditions(f, "day")
        params["limit"] = f.limit
        sql = f"""
SELECT toString(dim) AS kind, value AS name, toUInt32(uniqMerge(visitors)) AS visitors,
       toUInt32(sum(events)) AS events
FROM {db}.dash_daily WHERE {where} AND dim IN ('device', 'browser', 'os')
GROUP BY kind, name ORDER BY kind, visitors DESC, events DESC, name LIMIT {{limit:UInt32}} BY kind"""
        return Query(sql, params)
    where, params = derived_conditions(f, "day", segments=True)
    params["limit"] = f.limit
    sql = f"""
SELECT kind, name, toUInt32(uniqCombinedMerge(14)(visitors)) AS visitors,
       toUInt32(sum(events)) AS events
FROM {db}.dash_device_segs
ARRAY JOIN ['device', 'browser', 'os'] AS kind,
           [toString(device), toString(browser), toString(os)] AS name
WHERE {where}
GROUP BY kind, name ORDER BY kind, visitors DESC, events DESC, name LIMIT {{limit:UInt32}} BY kind"""
    return Query(sql, params)


def goals(db: str, f: Filters) -> Query:
    """Events and visitors per ename: from ``dash_daily`` without a segment filter, from
    ``dash_goals`` (schema/098_dashboard_goals.sql) with one."""
    if not f.segmented:
        where, params = derived_conditions(f, "day")
        params["limit"] = f.limit
        sql = f"""
SELECT value AS ename, toUInt32(sum(events)) AS events, toUInt32(uniqMerge(visitors)) AS visitors
FROM {db}.dash_daily WHERE {where} AND dim = 'ename'
GROUP BY value ORDER BY events DESC, ename LIMIT {{limit:UInt32}}"""
        return Query(sql, params)
    where, params = derived_conditions(f, "day", segments=True)
    params["limit"] = f.limit
    sql = f"""
SELECT toString(ename) AS ename, toUInt32(sum(events)) AS events,
       toUInt32(uniqMerge(visitors)) AS visitors
FROM {db}.dash_goals WHERE {where} AND ename != ''
GROUP BY ename ORDER BY events DESC, ename LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def outcomes(db: str, f: Filters) -> Query:
    """Events per outcome: from ``outcomes`` without a segment filter, from ``dash_goals``
    with one."""
    if f.segmented:
        where, params = derived_conditions(f, "day", segments=True)
        sql = f"""
SELECT outcome, toUInt32(sum(events)) AS events FROM {db}.dash_goals
WHERE {where} AND outcome != ''
GROUP BY outcome ORDER BY events DESC, outcome LIMIT {{limit:UInt32}}"""
    else:
        where, params = derived_conditions(f, "created")
        sql = f"""
SELECT outcome, toUInt32(sum(total)) AS events FROM {db}.outcomes WHERE {where}
GROUP BY outcome ORDER BY events DESC, outcome LIMIT {{limit:UInt32}}"""
    params["limit"] = f.limit
    return Query(sql, params)


def parse_steps(text: str) -> list[str]:
    steps = [s.strip() for s in text.split(",") if s.strip()]
    if len(steps) > MAX_STEPS:
        raise BadFilter(f"a funnel has at most {MAX_STEPS} steps")
    if any(len(s) > MAX_TEXT for s in steps):
        raise BadFilter(f"a funnel step is longer than {MAX_TEXT} characters")
    return steps


# The funnel's visitors are split into parts (vid ranges) answered one query each, each
# grouping a part's visitors only: windowFunnel's states of every visitor of 30 days of 10M
# events passed half the reader's 96 MiB and spilled to disk (~1.2 s); a part's do not.
FUNNEL_DAYS_PER_PART = 7
MAX_FUNNEL_PARTS = 128


def funnel_parts(f: Filters) -> int:
    return min(MAX_FUNNEL_PARTS, max(1, f.days // FUNNEL_DAYS_PER_PART))


def _vid_bound(i: int, parts: int) -> str:
    # Only the 9th byte varies, so the bounds increase in any byte order a UUID compares by;
    # ClickHouse compares it first, so the parts are alike in size.
    return f"00000000-0000-0000-{i * 256 // parts:02x}00-000000000000"


def funnel(
    db: str, f: Filters, steps: list[str], window_seconds: int, part: int = 0, parts: int = 1
) -> Query:
    """Part ``part`` of ``parts`` of the funnel: for the visitors of that vid range, how many
    did step 1, then 2, ... each within ``window_seconds`` of step 1 (per level reached; the
    parts add up). Read from ``dash_funnel`` (schema/093_dashboard_funnel.sql): the client
    events without bots that have an ename, sorted by visitor, with their time in seconds
    (what windowFunnel reads), so a part reads its visitors' rows only. ``funnel_events`` is
    the same over ``events``."""
    where, params = event_conditions(f, dated=False, filtered=True)
    # Whole days in seconds, compared as the column's own type: a DateTime64 bound made
    # every row's time a DateTime64 first. A store whose table still has the DateTime64
    # column (made before, docs/dashboard.md) compares it with these as well.
    dated = f"created_at >= {{start_s:{TS_S}}} AND created_at < {{end_s:{TS_S}}}"
    where = f"{dated} AND {where}" if where else dated
    params["start_s"] = _ts(f.start)[:19]
    params["end_s"] = _ts(f.end + timedelta(days=1))[:19]
    if part > 0:
        where += " AND vid >= toUUID({vid_from:String})"
        params["vid_from"] = _vid_bound(part, parts)
    if part < parts - 1:
        where += " AND vid < toUUID({vid_to:String})"
        params["vid_to"] = _vid_bound(part + 1, parts)
    return _funnel(db, "dash_funnel", where, params, steps, window_seconds)


def funnel_events(db: str, f: Filters, steps: list[str], window_seconds: int) -> Query:
    where, params = event_conditions(f)
    return _funnel(db, "events", where, params, steps, window_seconds)


def _funnel(db, table, where, params, steps, window_seconds) -> Query:
    names = [f"s{i}" for i in range(len(steps))]
    params.update(zip(names, steps, strict=True))
    params["window"] = window_seconds
    conditions = ", ".join(f"ename = {{{n}:String}}" for n in names)
    listed = ", ".join(f"{{{n}:String}}" for n in names)
    sql = f"""
SELECT level, toUInt32(count()) AS visitors
FROM (
    SELECT vid, windowFunnel({{window:UInt64}})(toDateTime(created_at), {conditions}) AS level
    FROM {db}.{table} WHERE {where} AND ename IN ({listed})
    GROUP BY vid
)
WHERE level > 0 GROUP BY level ORDER BY level"""
    return Query(sql, params)


def links(db: str, f: Filters) -> Query:
    where, params = event_conditions(f, client_only=False)
    params["limit"] = f.limit
    sql = f"""
SELECT toString(r.id) AS id, r.urlfrom AS urlfrom, r.urlto AS urlto,
       toUInt32(c.clicks) AS clicks
FROM (SELECT id, urlfrom, urlto FROM {db}.redirects FINAL WHERE deleted = 0) AS r
LEFT JOIN (
    SELECT rid, count() AS clicks FROM {db}.events
    WHERE {where} AND rid != toUUID('{ZERO_UUID}') GROUP BY rid
) AS c ON c.rid = r.id
ORDER BY clicks DESC, urlfrom LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def link_clicks(db: str, f: Filters) -> Query:
    where, params = event_conditions(f, client_only=False)
    sql = f"""
SELECT toString(toDate(created_at)) AS t, toUInt32(count()) AS clicks
FROM {db}.events WHERE {where} AND rid != toUUID('{ZERO_UUID}')
GROUP BY t ORDER BY t"""
    return Query(sql, params)


def _payment_conditions(f: Filters, start: date | None = None) -> tuple[str, dict[str, Any]]:
    parts = [f"created_at < {{end:{TS}}}"]
    params: dict[str, Any] = {"end": _ts(f.end + timedelta(days=1))}
    if start is not None:
        parts.append(f"created_at >= {{start:{TS}}}")
        params["start"] = _ts(start)
    if f.host:
        parts.append("hhash = {hhash:String}")
        params["hhash"] = short_hash(f.host)
    return " AND ".join(parts), params


def revenue_series(db: str, f: Filters) -> Query:
    """Per day of the range: revenue and payments; ``before`` is the revenue up to the range,
    so the cumulative (lifetime) revenue can be drawn."""
    where, params = _payment_conditions(f)
    params["start"] = _ts(f.start)
    sql = f"""
SELECT if(created_at < {{start:{TS}}}, 'before', toString(toDate(created_at))) AS t,
       sum(revenue) AS revenue, toUInt32(count()) AS payments,
       toUInt32(uniqIf(uid, uid != toUUID('{ZERO_UUID}'))) AS customers
FROM {db}.payments FINAL WHERE {where}
GROUP BY t ORDER BY t"""
    return Query(sql, params)


def revenue_totals(db: str, f: Filters) -> Query:
    where, params = _payment_conditions(f, f.start)
    sql = f"""
SELECT sum(revenue) AS revenue, toUInt32(count()) AS payments,
       toUInt32(uniqIf(uid, uid != toUUID('{ZERO_UUID}'))) AS customers
FROM {db}.payments FINAL WHERE {where}"""
    return Query(sql, params)


def top_customers(db: str, f: Filters) -> Query:
    """Customers by lifetime value (``ltvu``: every payment of the user, whenever made)."""
    parts = ["1"]
    params: dict[str, Any] = {"limit": f.limit}
    if f.host:
        parts.append("hhash = {hhash:String}")
        params["hhash"] = short_hash(f.host)
    sql = f"""
SELECT toString(uid) AS uid, sum(paid) AS ltv, toUInt32(sum(payments)) AS payments
FROM {db}.ltvu WHERE {" AND ".join(parts)}
GROUP BY uid ORDER BY ltv DESC, uid LIMIT {{limit:UInt32}}"""
    return Query(sql, params)


def consent(db: str, f: Filters) -> Query:
    """Consent decisions of the range by cflags and the jurisdiction of the visitor's place
    (a region rule before a country rule; 'none' outside every jurisdiction)."""
    parts = [f"created_at >= {{start:{TS}}} AND created_at < {{end:{TS}}}"]
    params: dict[str, Any] = {"start": _ts(f.start), "end": _ts(f.end + timedelta(days=1))}
    if f.host:
        parts.append("hhash = {hhash:String}")
        params["hhash"] = short_hash(f.host)
    if f.country:
        parts.append("country = {country:String}")
        params["country"] = f.country
    sql = f"""
SELECT cflags, if(jr != '', jr, if(jc != '', jc, 'none')) AS jurisdiction,
       toUInt32(count()) AS decisions, toUInt32(uniq(vid)) AS visitors
FROM (
    SELECT cflags, vid, upper(toString(country)) AS c,
           upper(concat(toString(country), '-', region)) AS cr
    FROM {db}.agreed FINAL WHERE {" AND ".join(parts)}
) AS a
LEFT JOIN (
    SELECT upper(arrayJoin(countries)) AS c, toString(any(regulation)) AS jc
    FROM {db}.jurisdictions FINAL GROUP BY c
) AS jc USING c
LEFT JOIN (
    SELECT upper(arrayJoin(regions)) AS cr, toString(any(regulation)) AS jr
    FROM {db}.jurisdictions FINAL GROUP BY cr
) AS jr USING cr
GROUP BY cflags, jurisdiction ORDER BY decisions DESC, cflags, jurisdiction"""
    return Query(sql, params)
