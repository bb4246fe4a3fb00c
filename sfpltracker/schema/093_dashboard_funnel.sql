-- The dashboard's funnel table (sfpltracker/dashboard/queries.py, funnel()): the client events
-- without bots that have an ename, with only the columns a funnel reads (the visitor, time,
-- ename, host and the segment columns), sorted by visitor. windowFunnel groups by visitor: on
-- `events` (sorted by day) that was one hash table of every visitor of the range, which past
-- half the reader's 96 MiB spills to disk (goals with steps over 30 days of 10M events:
-- ~1.2 s). Sorted by visitor, the funnel is asked in parts (vid ranges), each reading and
-- grouping its own visitors' rows only. The rows are the events' own (a ReplacingMergeTree
-- keyed by eid as events is), so the parts add up to the funnel over events
-- (tests/test_dashboard_rollups.py). The rows name a person, so they also carry the columns
-- `forget` finds a subject by (uid, sid, ehash next to vid): erasing by a uid or an e-mail
-- hash reaches this copy as it reaches events, and `region` for a jurisdiction's retention
-- by region (CCPA: US-CA) (tests/test_privacy_cli.py).
-- The time is kept in seconds, the precision windowFunnel reads (it was a DateTime64 turned
-- into seconds per row): with a delta codec the column a funnel reads is a third the size,
-- and the funnel of 30 days of 10M events takes ~30% less CPU (docs/performance.md). A
-- store made before keeps its DateTime64 column (same answers, slower) until `dashboard
-- rebuild` makes the table again as declared here.
CREATE TABLE IF NOT EXISTS sfpla.dash_funnel
(
    vid UUID,
    created_at DateTime('UTC') CODEC(Delta, LZ4),
    eid UUID,
    ename LowCardinality(String),
    hostname LowCardinality(String),
    source String,
    medium String,
    campaign String,
    country LowCardinality(String),
    device LowCardinality(String),
    uid UUID,
    sid UUID,
    ehash String,
    region String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (vid, created_at, eid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.dash_funnel_mv TO sfpla.dash_funnel AS
SELECT vid, toDateTime(created_at, 'UTC') AS created_at, eid, ename, hostname, source, medium,
       campaign, country, device, uid, sid, ehash, region
FROM sfpla.events
WHERE server = 0 AND bot = 0 AND ename != '';
