-- The original tracker's side tables and views (its analytics/messaging/users schema), with its
-- table and column names, so its queries - and its tests' `SELECT count() FROM sfpla.<t> FINAL`
-- - run here unchanged. Nothing in this file is written by the gateway: every table is filled
-- by a materialized view from `events` (one write path), every view reads `events`.
--
-- Differences from the original, on purpose (reference section i):
-- * IPs are what IPMode stores (`events.ip`: a /24 or /48 by default), never the raw IP.
-- * `browser` is the parsed browser family, not the raw user agent.
-- * Bots are left out (`bot = 0`), as in the other derived tables; "client only" tables (the
--   original wrote them for client events only) are fed by `server = 0` events.
-- * The counting tables are Summing, so a count accumulates (impression_daily overwrote).
-- * Every view target keeps a deduplication window (a re-sent batch is counted once).

-- Columns of `events` these need (in 010_events.sql), added to a table an older schema created.
-- hostname: the request's host (lower-cased, no port): `hosts`.
-- uhash/chash: keyed hashes of `uname`/`cell` (never the value): `usernames`, `cells`.
-- new_vid: 1 when the gateway minted the visitor id on this request: `counters`.
ALTER TABLE sfpla.events ADD COLUMN IF NOT EXISTS hostname LowCardinality(String);
ALTER TABLE sfpla.events ADD COLUMN IF NOT EXISTS uhash String;
ALTER TABLE sfpla.events ADD COLUMN IF NOT EXISTS chash String;
ALTER TABLE sfpla.events ADD COLUMN IF NOT EXISTS new_vid UInt8;

-- Requests per (stored) IP and host, every event.
CREATE TABLE IF NOT EXISTS sfpla.ips
(
    hhash String,
    ip String,
    total UInt64,
    date Date
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (hhash, ip, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.ips_mv TO sfpla.ips AS
SELECT hhash, ip, toUInt64(1) AS total, toDate(created_at) AS date
FROM sfpla.events
WHERE ip != '' AND bot = 0;

-- Requests per visitor and host (client events). `uid` (an addition: the visitor's user, if
-- any event of the day named one) lets `forget --uid` find a visitor's counts.
CREATE TABLE IF NOT EXISTS sfpla.reqs
(
    hhash String,
    vid UUID,
    total UInt64,
    date Date,
    uid SimpleAggregateFunction(max, UUID)
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (hhash, vid, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.reqs_mv TO sfpla.reqs AS
SELECT hhash, vid, toUInt64(1) AS total, toDate(created_at) AS date, uid
FROM sfpla.events
WHERE server = 0 AND bot = 0;

-- Requests per browser (bhash: hash of the user agent) and host (client events).
CREATE TABLE IF NOT EXISTS sfpla.browsers
(
    hhash String,
    bhash String,
    browser String,
    total UInt64,
    date Date
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (hhash, bhash, browser, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.browsers_mv TO sfpla.browsers AS
SELECT hhash, bhash, toString(browser) AS browser, toUInt64(1) AS total,
       toDate(created_at) AS date
FROM sfpla.events
WHERE bhash != '' AND server = 0 AND bot = 0;

-- The host name behind each hhash (client events); the latest sighting wins under FINAL.
CREATE TABLE IF NOT EXISTS sfpla.hosts
(
    hhash String,
    hostname String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (hhash, hostname)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.hosts_mv TO sfpla.hosts AS
SELECT hhash, toString(hostname) AS hostname, created_at
FROM sfpla.events
WHERE hostname != '' AND server = 0 AND bot = 0;

-- Which visitors and sessions a user, user name, e-mail or phone was seen with (client
-- events). Only hashes: `uhash`/`ehash`/`chash` are keyed hashes made by the gateway (or sent
-- by the client already hashed); the raw value is never stored.
CREATE TABLE IF NOT EXISTS sfpla.userhosts
(
    hhash String,
    uid UUID,
    vid UUID,
    sid UUID,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (hhash, uid, vid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.userhosts_mv TO sfpla.userhosts AS
SELECT hhash, uid, vid, sid, created_at
FROM sfpla.events
WHERE uid != toUUID('00000000-0000-0000-0000-000000000000') AND server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.usernames
(
    hhash String,
    uhash String,
    vid UUID,
    sid UUID,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (hhash, uhash, vid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.usernames_mv TO sfpla.usernames AS
SELECT hhash, uhash, vid, sid, created_at
FROM sfpla.events
WHERE uhash != '' AND server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.emails
(
    hhash String,
    ehash String,
    vid UUID,
    sid UUID,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (hhash, ehash)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.emails_mv TO sfpla.emails AS
SELECT hhash, ehash, vid, sid, created_at
FROM sfpla.events
WHERE ehash != '' AND server = 0 AND bot = 0;

CREATE TABLE IF NOT EXISTS sfpla.cells
(
    hhash String,
    chash String,
    vid UUID,
    sid UUID,
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (hhash, chash, vid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.cells_mv TO sfpla.cells AS
SELECT hhash, chash, vid, sid, created_at
FROM sfpla.events
WHERE chash != '' AND server = 0 AND bot = 0;

-- Named counters; the gateway counts `vids_created` (a visitor id minted for a client event),
-- per day: `SELECT sum(total) FROM sfpla.counters WHERE id = 'vids_created'`. The NATS
-- consumer (notify/consumer.py, "Consume": true) also inserts its `tic.count` rows here.
CREATE TABLE IF NOT EXISTS sfpla.counters
(
    id String,
    total UInt64,
    date Date
)
ENGINE = SummingMergeTree(total)
PARTITION BY toYYYYMM(date)
ORDER BY (id, date)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.counters_mv TO sfpla.counters AS
SELECT 'vids_created' AS id, toUInt64(1) AS total, toDate(created_at) AS date
FROM sfpla.events
WHERE new_vid = 1 AND server = 0 AND bot = 0;

-- Campaign impressions per thread, organisation, day and variant (`xid`): an event with a
-- `tid`, an `oid` and an `ename` that is a conversion or carries a score, as in the original.
-- Summing (the original's Replacing table overwrote its counts); `unique_visitors` counts such
-- events, as the original's did (uniqExact(vid) over events for distinct visitors).
CREATE TABLE IF NOT EXISTS sfpla.impression_daily
(
    oid UUID,
    org LowCardinality(String),
    tid UUID,
    campaign_id String,
    day Date,
    variant_id String,
    total_impressions Int64,
    anonymous_impressions Int64,
    identified_impressions Int64,
    unique_visitors Int64,
    conversions Int64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = SummingMergeTree((total_impressions, anonymous_impressions, identified_impressions,
                           unique_visitors, conversions))
PARTITION BY toYYYYMM(day)
ORDER BY (oid, org, tid, day, variant_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.impression_daily_mv TO sfpla.impression_daily AS
SELECT oid, org, tid, campaign AS campaign_id, toDate(created_at) AS day, xid AS variant_id,
       toInt64(1) AS total_impressions,
       toInt64(uid = toUUID('00000000-0000-0000-0000-000000000000')) AS anonymous_impressions,
       toInt64(uid != toUUID('00000000-0000-0000-0000-000000000000')) AS identified_impressions,
       toInt64(1) AS unique_visitors,
       toInt64(ename = 'conversion') AS conversions,
       created_at AS updated_at
FROM sfpla.events
WHERE tid != toUUID('00000000-0000-0000-0000-000000000000')
  AND oid != toUUID('00000000-0000-0000-0000-000000000000')
  AND ename != '' AND (ename = 'conversion' OR score != 0) AND bot = 0;

-- Organisations (read, never written by the gateway: an operator's table). Short links whose
-- tracked destination is relative go to the org's `ddata.default_destination_host`.
CREATE TABLE IF NOT EXISTS sfpla.orgs
(
    oid UUID,
    org LowCardinality(String),
    parent UUID,
    root UUID,
    lname String,
    hname String,
    notes String,
    roles Array(String),
    rights Array(String),
    etype String,
    country String,
    lang String,
    hq_id UUID,
    addresses String,
    host String,
    hhash String,
    taxid String,
    terms_accepted DateTime64(3, 'UTC'),
    mcerts String,
    expiry Date,
    email String,
    phone String,
    ddata String,
    created_at DateTime64(3, 'UTC'),
    owner UUID,
    updated_at DateTime64(3, 'UTC'),
    updater UUID
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (oid, org);

-- The original's views over events, by the same names and columns. `did`/`auth` of the
-- original are `device_id`/`auth_id` here (the columns of its events table).
CREATE VIEW IF NOT EXISTS sfpla.visitors_latest AS
SELECT * FROM sfpla.events WHERE bot = 0
ORDER BY created_at DESC LIMIT 1 BY oid, vid;

-- The original's `visitors` and `sessions` views (the first event of each visitor / session,
-- every events column). Those two names are this gateway's first/last-seen tables (API.md
-- section 6, 010_events.sql), so the original's views are here as `visitors_first` and
-- `sessions_first` (docs/migrating.md: rename them in the original's queries).
CREATE VIEW IF NOT EXISTS sfpla.visitors_first AS
SELECT * FROM sfpla.events WHERE bot = 0
ORDER BY created_at ASC LIMIT 1 BY oid, vid;

CREATE VIEW IF NOT EXISTS sfpla.sessions_first AS
SELECT * FROM sfpla.events WHERE bot = 0
ORDER BY created_at ASC LIMIT 1 BY oid, sid;

CREATE VIEW IF NOT EXISTS sfpla.nodes AS
SELECT hhash, vid, uid, iphash, ip, sid, created_at
FROM sfpla.events
WHERE ip != '' AND iphash != '' AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, vid, iphash;

CREATE VIEW IF NOT EXISTS sfpla.locations AS
SELECT hhash, vid, lat, lon, uid, sid, created_at
FROM sfpla.events
WHERE lat != 0 AND lon != 0 AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, vid, lat, lon;

CREATE VIEW IF NOT EXISTS sfpla.aliases AS
SELECT hhash, vid, uid, sid, created_at
FROM sfpla.events
WHERE uid != toUUID('00000000-0000-0000-0000-000000000000') AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, vid, uid;

CREATE VIEW IF NOT EXISTS sfpla.user_sessions AS
SELECT hhash, uid, vid, sid, created_at
FROM sfpla.events
WHERE uid != toUUID('00000000-0000-0000-0000-000000000000') AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, uid, vid, sid;

CREATE VIEW IF NOT EXISTS sfpla.routed AS
SELECT hhash, ip, url, created_at AS updated_at
FROM sfpla.events
WHERE ip != '' AND url != '' AND bot = 0
ORDER BY created_at DESC LIMIT 1 BY hhash, ip;

CREATE VIEW IF NOT EXISTS sfpla.referrals AS
SELECT hhash, ref, vid, 0 AS gen, created_at, -toInt64(toDateTime(created_at)) AS version_ts
FROM sfpla.events
WHERE ref != toUUID('00000000-0000-0000-0000-000000000000') AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, vid;

CREATE VIEW IF NOT EXISTS sfpla.referred AS
SELECT hhash, rcode, vid, 0 AS gen, created_at, -toInt64(toDateTime(created_at)) AS version_ts
FROM sfpla.events
WHERE rcode != '' AND bot = 0
ORDER BY created_at ASC LIMIT 1 BY hhash, vid;

CREATE VIEW IF NOT EXISTS sfpla.last_event_by_vid_uid_ename AS
SELECT oid, org, vid, uid, ename, created_at AS last_occurred, tid AS last_thread,
       dateDiff('day', toDateTime(created_at), now()) AS days_since
FROM sfpla.events
WHERE bot = 0
ORDER BY created_at DESC LIMIT 1 BY oid, vid, uid, ename;

CREATE VIEW IF NOT EXISTS sfpla.last_event_by_user AS
SELECT oid, org, uid, ename AS event_type, created_at AS last_event_time,
       dateDiff('day', toDateTime(created_at), now()) AS days_since_event
FROM sfpla.events
WHERE bot = 0
ORDER BY created_at DESC LIMIT 1 BY oid, uid, ename;

CREATE VIEW IF NOT EXISTS sfpla.conversion_funnel AS
SELECT oid, org, vid,
       min(created_at) AS first_touch,
       maxIf(created_at, ename IN ('conversion', 'purchase', 'paid')) AS conversion_time,
       dateDiff('day', toDateTime(min(created_at)),
                toDateTime(maxIf(created_at, ename IN ('conversion', 'purchase', 'paid'))))
           AS days_to_conversion,
       maxIf(score, ename IN ('purchase', 'paid')) AS conversion_value,
       anyIf(invoice_id, ename IN ('conversion', 'purchase', 'paid')) AS invoice_id
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, org, vid
HAVING countIf(ename IN ('conversion', 'purchase', 'paid')) > 0;

-- Counts distinct event ids: a replayed event not merged away yet is counted once.
CREATE VIEW IF NOT EXISTS sfpla.event_frequency AS
SELECT oid, org, ename AS event_type,
       uniqExact(eid) AS total_events,
       uniqExact(vid) AS unique_visitors,
       uniqExact(uid) AS unique_users,
       min(created_at) AS first_seen,
       max(created_at) AS last_seen,
       avg(score) AS avg_score
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, org, ename
ORDER BY total_events DESC;
