-- The dashboard's daily rollup (sfpltracker/dashboard/queries.py): per day, host and one
-- dimension value, the visitors and sessions (uniq states, merged over any range of days),
-- events and page views of client events without bots. A figure without a segment filter
-- reads this (tens of rows per day) instead of every event of the range (docs/dashboard.md).
-- dim: 'all' (value ''), 'country', 'device', 'browser', 'os', 'ename',
--      'campaign' (value: source TAB medium TAB campaign; only events with one of them set).
-- Sorted by dim first and in small granules: a figure reads the rows of its one dim only,
-- not the uniq states of every dim of the days (devices over 30 days of 10M events: 252 ->
-- 87 ms, docs/performance.md). A store made before keeps its first key (same answers,
-- slower); docs/dashboard.md says how to rebuild it. The overview reads dash_totals.
CREATE TABLE IF NOT EXISTS sfpla.dash_daily
(
    day Date,
    hhash String,
    dim LowCardinality(String),
    value String,
    visitors AggregateFunction(uniq, UUID),
    sessions AggregateFunction(uniq, UUID),
    events SimpleAggregateFunction(sum, UInt64),
    pageviews SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (dim, day, hhash, value)
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.dash_daily_mv TO sfpla.dash_daily AS
SELECT toDate(created_at) AS day, hhash, kv.1 AS dim, kv.2 AS value,
       uniqState(vid) AS visitors, uniqStateIf(sid, kv.1 = 'all') AS sessions,
       toUInt64(count()) AS events, toUInt64(countIf(url != '')) AS pageviews
FROM sfpla.events
ARRAY JOIN arrayFilter(x -> x.1 != '', [
    ('all', ''),
    ('country', toString(country)),
    ('device', toString(device)),
    ('browser', toString(browser)),
    ('os', toString(os)),
    (if(ename != '', 'ename', ''), toString(ename)),
    (if(source != '' OR medium != '' OR campaign != '', 'campaign', ''),
     concat(source, '\t', medium, '\t', campaign))
]) AS kv
WHERE server = 0 AND bot = 0
GROUP BY day, hhash, dim, value;
