-- The dashboard's totals per day and host (sfpltracker/dashboard/queries.py: the overview and
-- its series): visitors and sessions as uniqCombined(14) states, events and page views, of
-- client events without bots. dash_daily holds the same as dim 'all' in uniq states; merging
-- those for two periods of 30 days took ~100 ms on 10M events (one state of up to ~25,000
-- ids per day and host), these ~40 ms: an HLL of 2^14 cells merges cell by cell. Exact (a
-- hash set) up to some thousands per state, ~0.8% error beyond (docs/dashboard.md).
CREATE TABLE IF NOT EXISTS sfpla.dash_totals
(
    day Date,
    hhash String,
    visitors AggregateFunction(uniqCombined(14), UUID),
    sessions AggregateFunction(uniqCombined(14), UUID),
    events SimpleAggregateFunction(sum, UInt64),
    pageviews SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, hhash)
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.dash_totals_mv TO sfpla.dash_totals AS
SELECT toDate(created_at) AS day, hhash,
       uniqCombinedState(14)(vid) AS visitors, uniqCombinedState(14)(sid) AS sessions,
       toUInt64(count()) AS events, toUInt64(countIf(url != '')) AS pageviews
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY day, hhash;
