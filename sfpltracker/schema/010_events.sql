-- One row per accepted event. Column names and types follow the original tracker's
-- analytics schema so existing queries keep working; `ehash`, `outcome`, `bot` and `server`
-- are additions (see README "Schema").
--
-- Deduplication: `eid` is the dedup key. The sort key (toDate(created_at), eid) makes
-- ReplacingMergeTree collapse a replayed event (identical row, from the spool) and a client
-- retry on the same day; queries that count events use FINAL (or uniqExact(eid)).
-- UUIDv7 eids minted by the gateway are time ordered, so the key is also time ordered.
CREATE TABLE IF NOT EXISTS sfpla.events
(
    eid UUID,
    oid UUID,
    org LowCardinality(String),
    vid UUID,
    device_id UUID,
    sid UUID,
    hhash String,
    app String,
    rel String,
    cflags Int64,
    created_at DateTime64(3, 'UTC'),
    uid UUID,
    tid UUID,
    last String,
    url String,
    ip String,
    iphash String,
    lat Float64,
    lon Float64,
    ptyp String,
    bhash String,
    auth_id UUID,
    duration Int64,
    xid String,
    split String,
    ename LowCardinality(String),
    source String,
    medium String,
    campaign String,
    content String,
    country LowCardinality(String),
    region String,
    city String,
    zip String,
    term String,
    etyp LowCardinality(String),
    ver Int32,
    sink String,
    score Float64,
    -- Bounded: at most 16 paths x 4 types as subcolumns, the rest in one shared Map per part,
    -- whatever keys clients invent (docs/resources.md). params.key reads any path.
    params JSON(max_dynamic_paths = 16, max_dynamic_types = 4),
    invoice_id UUID,
    targets JSON(max_dynamic_paths = 8, max_dynamic_types = 2),
    relation String,
    rid UUID,
    ja4h String,
    gaid String,
    idfa String,
    msid String,
    fbid String,
    culture String,
    ref UUID,
    rcode String,
    aff String,
    arm_id String,
    mcid String,
    browser LowCardinality(String),
    device LowCardinality(String),
    os LowCardinality(String),
    tz String,
    vp_w Int64,
    vp_h Int64,
    ehash String,
    outcome String,
    bot UInt8,
    server UInt8,
    -- additions for the original's side tables (070_original.sql adds them to an older table)
    hostname LowCardinality(String),
    uhash String,
    chash String,
    new_vid UInt8,
    INDEX idx_vid vid TYPE bloom_filter GRANULARITY 4,
    INDEX idx_uid uid TYPE bloom_filter GRANULARITY 4,
    INDEX idx_tid tid TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (toDate(created_at), eid)
SETTINGS non_replicated_deduplication_window = 1000;

-- The last 7 days of events.
CREATE VIEW IF NOT EXISTS sfpla.events_recent AS
SELECT * FROM sfpla.events WHERE created_at >= now64(3, 'UTC') - INTERVAL 7 DAY;

-- Derived tables: filled by materialized views on every insert into events, never written by
-- the gateway. Client events only (server = 0) and no bots, like the original's client-only
-- side tables.
-- Every table a view writes keeps a deduplication window: after a crash the gateway sends the
-- batch that was being inserted again with the same insert_deduplication_token, and ClickHouse
-- then writes only the view parts that were missing (docs/durability.md).
CREATE TABLE IF NOT EXISTS sfpla.hits
(
    hhash String,
    url String,
    total UInt64,
    date Date
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (hhash, url, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.hits_mv TO sfpla.hits AS
SELECT hhash, url, toUInt64(1) AS total, toDate(created_at) AS date
FROM sfpla.events
WHERE url != '' AND server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.dailies
(
    ip String,
    day Date,
    total UInt64
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(day)
ORDER BY (ip, day)
SETTINGS non_replicated_deduplication_window = 1000;

-- `ip` here is the stored (anonymised) ip of the event, never more than events.ip.
CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.dailies_mv TO sfpla.dailies AS
SELECT ip, toDate(created_at) AS day, toUInt64(1) AS total
FROM sfpla.events
WHERE server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.referrers
(
    hhash String,
    url String,
    total UInt64,
    date Date
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (hhash, url, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.referrers_mv TO sfpla.referrers AS
SELECT hhash, last AS url, toUInt64(1) AS total, toDate(created_at) AS date
FROM sfpla.events
WHERE last != '' AND server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.outcomes
(
    hhash String,
    outcome String,
    sink String,
    created Date,
    url String,
    total UInt64
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(created)
ORDER BY (hhash, outcome, sink, url, created)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.outcomes_mv TO sfpla.outcomes AS
SELECT hhash, outcome, sink, toDate(created_at) AS created, url, toUInt64(1) AS total
FROM sfpla.events
WHERE outcome != '' AND server = 0 AND bot = 0;

-- First and last sight of each visitor and session. SimpleAggregateFunction columns read
-- like plain columns: `SELECT ... FROM sfpla.visitors FINAL` or GROUP BY with min/max/sum.
CREATE TABLE IF NOT EXISTS sfpla.visitors
(
    oid UUID,
    vid UUID,
    hhash SimpleAggregateFunction(any, String),
    uid SimpleAggregateFunction(max, UUID),
    first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    events SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (oid, vid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.visitors_mv TO sfpla.visitors AS
SELECT oid, vid, hhash, uid, created_at AS first_seen, created_at AS last_seen,
       toUInt64(1) AS events
FROM sfpla.events
WHERE bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.sessions
(
    oid UUID,
    sid UUID,
    vid SimpleAggregateFunction(any, UUID),
    hhash SimpleAggregateFunction(any, String),
    first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    events SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (oid, sid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.sessions_mv TO sfpla.sessions AS
SELECT oid, sid, vid, hhash, created_at AS first_seen, created_at AS last_seen,
       toUInt64(1) AS events
FROM sfpla.events
WHERE bot = 0;
