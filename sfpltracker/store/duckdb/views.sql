-- The DuckDB store's derived tables and views (store/duckdb/schema.py), one for each table a
-- ClickHouse materialized view fills and each plain view of schema/*.sql, with the same names
-- and columns. A view is computed from its source table when read, so it counts every stored
-- row exactly once (the source tables are deduplicated on insert) and FINAL needs nothing:
-- a Summing target is the GROUP BY of its key, a Replacing one the newest row of its key, an
-- Aggregating one its aggregates. tests/test_duckdb_store.py checks the columns against the
-- ClickHouse schema. Statements end with ";" at the end of a line; `sfpla.` is the database.

CREATE OR REPLACE VIEW sfpla.events_recent AS
SELECT * FROM sfpla.events
WHERE created_at >= make_timestamp(epoch_us(now())) - INTERVAL 7 DAY;

CREATE OR REPLACE VIEW sfpla.hits AS
SELECT hhash, url, count(*)::UBIGINT AS total, created_at::DATE AS date
FROM sfpla.events
WHERE url != '' AND server = 0 AND bot = 0
GROUP BY hhash, url, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.dailies AS
SELECT ip, created_at::DATE AS day, count(*)::UBIGINT AS total
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY ip, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.referrers AS
SELECT hhash, last AS url, count(*)::UBIGINT AS total, created_at::DATE AS date
FROM sfpla.events
WHERE last != '' AND server = 0 AND bot = 0
GROUP BY hhash, last, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.outcomes AS
SELECT hhash, outcome, sink, created_at::DATE AS created, url, count(*)::UBIGINT AS total
FROM sfpla.events
WHERE outcome != '' AND server = 0 AND bot = 0
GROUP BY hhash, outcome, sink, url, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.visitors AS
SELECT oid, vid, any_value(hhash) AS hhash, max(uid) AS uid, min(created_at) AS first_seen,
       max(created_at) AS last_seen, count(*)::UBIGINT AS events
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, vid;

CREATE OR REPLACE VIEW sfpla.sessions AS
SELECT oid, sid, any_value(vid) AS vid, any_value(hhash) AS hhash,
       min(created_at) AS first_seen, max(created_at) AS last_seen, count(*)::UBIGINT AS events
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, sid;

CREATE OR REPLACE VIEW sfpla.ltv AS
SELECT hhash, id, id_type, sum(paid) AS paid, any_value(oid) AS oid, any_value(org) AS org,
       max(updated_at) AS updated_at, any_value(updater) AS updater,
       min(created_at) AS created_at, any_value(owner) AS owner
FROM (
    SELECT hhash, uid AS id, 'uid' AS id_type, revenue AS paid, oid, org, updated_at, updater,
           created_at, owner FROM sfpla.payments
    UNION ALL
    SELECT hhash, vid, 'vid', revenue, oid, org, updated_at, updater, created_at, owner
    FROM sfpla.payments
    UNION ALL
    SELECT hhash, orid, 'orid', revenue, oid, org, updated_at, updater, created_at, owner
    FROM sfpla.payments
)
WHERE id != '00000000-0000-0000-0000-000000000000'::UUID
GROUP BY hhash, id, id_type;

CREATE OR REPLACE VIEW sfpla.ltvu AS
SELECT hhash, uid, oid, sum(revenue) AS paid, count(*)::UBIGINT AS payments,
       max(updated_at) AS updated_at
FROM sfpla.payments
WHERE uid != '00000000-0000-0000-0000-000000000000'::UUID
GROUP BY hhash, uid, oid;

CREATE OR REPLACE VIEW sfpla.ltvv AS
SELECT hhash, vid, oid, sum(revenue) AS paid, count(*)::UBIGINT AS payments,
       max(updated_at) AS updated_at
FROM sfpla.payments
WHERE vid != '00000000-0000-0000-0000-000000000000'::UUID
GROUP BY hhash, vid, oid;

-- The latest decision per visitor (ReplacingMergeTree(updated_at) ORDER BY vid).
CREATE OR REPLACE VIEW sfpla.agreements AS
SELECT * FROM sfpla.agreed
QUALIFY row_number() OVER (PARTITION BY vid ORDER BY updated_at DESC, created_at DESC, id DESC) = 1;

CREATE OR REPLACE VIEW sfpla.ips AS
SELECT hhash, ip, count(*)::UBIGINT AS total, created_at::DATE AS date
FROM sfpla.events
WHERE ip != '' AND bot = 0
GROUP BY hhash, ip, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.reqs AS
SELECT hhash, vid, count(*)::UBIGINT AS total, created_at::DATE AS date, max(uid) AS uid
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY hhash, vid, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.browsers AS
SELECT hhash, bhash, browser, count(*)::UBIGINT AS total, created_at::DATE AS date
FROM sfpla.events
WHERE bhash != '' AND server = 0 AND bot = 0
GROUP BY hhash, bhash, browser, created_at::DATE;

CREATE OR REPLACE VIEW sfpla.hosts AS
SELECT hhash, hostname, max(created_at) AS created_at
FROM sfpla.events
WHERE hostname != '' AND server = 0 AND bot = 0
GROUP BY hhash, hostname;

CREATE OR REPLACE VIEW sfpla.userhosts AS
SELECT hhash, uid, vid, sid, created_at
FROM sfpla.events
WHERE uid != '00000000-0000-0000-0000-000000000000'::UUID AND server = 0 AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, uid, vid ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.usernames AS
SELECT hhash, uhash, vid, sid, created_at
FROM sfpla.events
WHERE uhash != '' AND server = 0 AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, uhash, vid ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.emails AS
SELECT hhash, ehash, vid, sid, created_at
FROM sfpla.events
WHERE ehash != '' AND server = 0 AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, ehash ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.cells AS
SELECT hhash, chash, vid, sid, created_at
FROM sfpla.events
WHERE chash != '' AND server = 0 AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, chash, vid ORDER BY created_at DESC) = 1;

-- `counters` takes rows too (the NATS consumer's tic.count): they are kept here.
CREATE TABLE IF NOT EXISTS sfpla.counters_consumed (
    id VARCHAR NOT NULL DEFAULT '',
    total UBIGINT NOT NULL DEFAULT 0,
    date DATE NOT NULL DEFAULT DATE '1970-01-01'
);

CREATE OR REPLACE VIEW sfpla.counters AS
SELECT id, sum(total)::UBIGINT AS total, date
FROM (
    SELECT id, total, date FROM sfpla.counters_consumed
    UNION ALL
    SELECT 'vids_created', 1, created_at::DATE
    FROM sfpla.events
    WHERE new_vid = 1 AND server = 0 AND bot = 0
)
GROUP BY id, date;

CREATE OR REPLACE VIEW sfpla.impression_daily AS
SELECT oid, org, tid, any_value(campaign) AS campaign_id, created_at::DATE AS day,
       xid AS variant_id,
       count(*)::BIGINT AS total_impressions,
       count_if(uid = '00000000-0000-0000-0000-000000000000'::UUID)::BIGINT
           AS anonymous_impressions,
       count_if(uid != '00000000-0000-0000-0000-000000000000'::UUID)::BIGINT
           AS identified_impressions,
       count(*)::BIGINT AS unique_visitors,
       count_if(ename = 'conversion')::BIGINT AS conversions,
       max(created_at) AS updated_at
FROM sfpla.events
WHERE tid != '00000000-0000-0000-0000-000000000000'::UUID
  AND oid != '00000000-0000-0000-0000-000000000000'::UUID
  AND ename != '' AND (ename = 'conversion' OR score != 0) AND bot = 0
GROUP BY oid, org, tid, created_at::DATE, xid;

CREATE OR REPLACE VIEW sfpla.visitors_first AS
SELECT * FROM sfpla.events WHERE bot = 0
QUALIFY row_number() OVER (PARTITION BY oid, vid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.sessions_first AS
SELECT * FROM sfpla.events WHERE bot = 0
QUALIFY row_number() OVER (PARTITION BY oid, sid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.visitors_latest AS
SELECT * FROM sfpla.events WHERE bot = 0
QUALIFY row_number() OVER (PARTITION BY oid, vid ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.nodes AS
SELECT hhash, vid, uid, iphash, ip, sid, created_at
FROM sfpla.events
WHERE ip != '' AND iphash != '' AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, vid, iphash ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.locations AS
SELECT hhash, vid, lat, lon, uid, sid, created_at
FROM sfpla.events
WHERE lat != 0 AND lon != 0 AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, vid, lat, lon ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.aliases AS
SELECT hhash, vid, uid, sid, created_at
FROM sfpla.events
WHERE uid != '00000000-0000-0000-0000-000000000000'::UUID AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, vid, uid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.user_sessions AS
SELECT hhash, uid, vid, sid, created_at
FROM sfpla.events
WHERE uid != '00000000-0000-0000-0000-000000000000'::UUID AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, uid, vid, sid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.routed AS
SELECT hhash, ip, url, created_at AS updated_at
FROM sfpla.events
WHERE ip != '' AND url != '' AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, ip ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.referrals AS
SELECT hhash, ref, vid, 0 AS gen, created_at, -epoch(created_at)::BIGINT AS version_ts
FROM sfpla.events
WHERE ref != '00000000-0000-0000-0000-000000000000'::UUID AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, vid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.referred AS
SELECT hhash, rcode, vid, 0 AS gen, created_at, -epoch(created_at)::BIGINT AS version_ts
FROM sfpla.events
WHERE rcode != '' AND bot = 0
QUALIFY row_number() OVER (PARTITION BY hhash, vid ORDER BY created_at) = 1;

CREATE OR REPLACE VIEW sfpla.last_event_by_vid_uid_ename AS
SELECT oid, org, vid, uid, ename, created_at AS last_occurred, tid AS last_thread,
       date_diff('day', created_at, make_timestamp(epoch_us(now()))) AS days_since
FROM sfpla.events
WHERE bot = 0
QUALIFY row_number() OVER (PARTITION BY oid, vid, uid, ename ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.last_event_by_user AS
SELECT oid, org, uid, ename AS event_type, created_at AS last_event_time,
       date_diff('day', created_at, make_timestamp(epoch_us(now()))) AS days_since_event
FROM sfpla.events
WHERE bot = 0
QUALIFY row_number() OVER (PARTITION BY oid, uid, ename ORDER BY created_at DESC) = 1;

CREATE OR REPLACE VIEW sfpla.conversion_funnel AS
SELECT oid, org, vid,
       min(created_at) AS first_touch,
       max(created_at) FILTER (WHERE ename IN ('conversion', 'purchase', 'paid'))
           AS conversion_time,
       date_diff('day', min(created_at),
                 max(created_at) FILTER (WHERE ename IN ('conversion', 'purchase', 'paid')))
           AS days_to_conversion,
       coalesce(max(score) FILTER (WHERE ename IN ('purchase', 'paid')), 0) AS conversion_value,
       coalesce(any_value(invoice_id) FILTER (WHERE ename IN ('conversion', 'purchase', 'paid')),
                '00000000-0000-0000-0000-000000000000'::UUID) AS invoice_id
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, org, vid
HAVING count_if(ename IN ('conversion', 'purchase', 'paid')) > 0;

CREATE OR REPLACE VIEW sfpla.event_frequency AS
SELECT oid, org, ename AS event_type,
       count(DISTINCT eid) AS total_events,
       count(DISTINCT vid) AS unique_visitors,
       count(DISTINCT uid) AS unique_users,
       min(created_at) AS first_seen,
       max(created_at) AS last_seen,
       avg(score) AS avg_score
FROM sfpla.events
WHERE bot = 0
GROUP BY oid, org, ename
ORDER BY total_events DESC;

-- The dashboard's rollup (schema/090_dashboard.sql) with its columns; visitors and sessions are
-- plain distinct counts here (ClickHouse keeps uniq states). The dashboard's own queries are
-- ClickHouse SQL and do not run on DuckDB (docs/duckdb.md).
CREATE OR REPLACE VIEW sfpla.dash_daily AS
SELECT created_at::DATE AS day, hhash, kv.dim AS dim, kv.value AS value,
       count(DISTINCT vid)::UBIGINT AS visitors,
       (count(DISTINCT sid) FILTER (WHERE kv.dim = 'all'))::UBIGINT AS sessions,
       count(*)::UBIGINT AS events, (count(*) FILTER (WHERE url != ''))::UBIGINT AS pageviews
FROM (
    SELECT *, unnest([
        {'dim': 'all', 'value': ''},
        {'dim': 'country', 'value': country::VARCHAR},
        {'dim': 'device', 'value': device::VARCHAR},
        {'dim': 'browser', 'value': browser::VARCHAR},
        {'dim': 'os', 'value': os::VARCHAR},
        {'dim': CASE WHEN ename != '' THEN 'ename' ELSE '' END, 'value': ename::VARCHAR},
        {'dim': CASE WHEN source != '' OR medium != '' OR campaign != '' THEN 'campaign' ELSE '' END,
         'value': concat(source, chr(9), medium, chr(9), campaign)}
    ]) AS kv
    FROM sfpla.events
    WHERE server = 0 AND bot = 0
)
WHERE kv.dim != ''
GROUP BY created_at::DATE, hhash, kv.dim, kv.value;

-- The dashboard's per-session rollup (schema/091_dashboard_sessions.sql) with its columns:
-- a row per day, host and session; entry and exit as (time, url) structs of its first and
-- last page (the sentinels of ClickHouse when it has none).
CREATE OR REPLACE VIEW sfpla.dash_sessions AS
SELECT created_at::DATE AS day, hhash, sid, count(*)::UBIGINT AS events,
       min(created_at) AS first_at, max(created_at) AS last_at,
       coalesce(min({'t': created_at, 'url': url}) FILTER (WHERE url != ''),
                {'t': TIMESTAMP '2299-12-31 00:00:00', 'url': ''}) AS entry,
       coalesce(max({'t': created_at, 'url': url}) FILTER (WHERE url != ''),
                {'t': TIMESTAMP '1970-01-01 00:00:00', 'url': ''}) AS exit
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY created_at::DATE, hhash, sid;

-- The dashboard's totals per day and host (schema/092_dashboard_totals.sql): plain distinct
-- counts here (ClickHouse keeps uniqCombined states).
CREATE OR REPLACE VIEW sfpla.dash_totals AS
SELECT created_at::DATE AS day, hhash, count(DISTINCT vid)::UBIGINT AS visitors,
       count(DISTINCT sid)::UBIGINT AS sessions, count(*)::UBIGINT AS events,
       (count(*) FILTER (WHERE url != ''))::UBIGINT AS pageviews
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY created_at::DATE, hhash;

-- The dashboard's funnel table (schema/093_dashboard_funnel.sql): the client events without
-- bots that have an ename, with the columns a funnel reads (ClickHouse keeps the time in
-- seconds).
CREATE OR REPLACE VIEW sfpla.dash_funnel AS
SELECT vid, created_at, eid, ename, hostname, source, medium, campaign, country, device,
       uid, sid, ehash, region
FROM sfpla.events
WHERE server = 0 AND bot = 0 AND ename != '';

-- The dashboard's totals per segment (schema/094_dashboard_segments.sql): plain distinct
-- counts here (ClickHouse keeps uniqCombined states).
CREATE OR REPLACE VIEW sfpla.dash_segments AS
SELECT created_at::DATE AS day, hhash, country, device, source, medium, campaign,
       count(DISTINCT vid)::UBIGINT AS visitors, count(DISTINCT sid)::UBIGINT AS sessions,
       count(*)::UBIGINT AS events, (count(*) FILTER (WHERE url != ''))::UBIGINT AS pageviews
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY created_at::DATE, hhash, country, device, source, medium, campaign;

-- The dashboard's goals per segment (schema/098_dashboard_goals.sql): plain distinct counts
-- here (ClickHouse keeps uniq states).
CREATE OR REPLACE VIEW sfpla.dash_goals AS
SELECT created_at::DATE AS day, hhash, country, device, source, medium, campaign, ename,
       outcome, count(DISTINCT vid)::UBIGINT AS visitors, count(*)::UBIGINT AS events
FROM sfpla.events
WHERE server = 0 AND bot = 0 AND (ename != '' OR outcome != '')
GROUP BY created_at::DATE, hhash, country, device, source, medium, campaign, ename, outcome;

-- The dashboard's per-session rollup by segment (schema/095_dashboard_session_segments.sql):
-- a row per day, host, segment combination and session; entry and exit as the least / greatest
-- key of 16 digits of time (epoch ms + 10^14) and url ('~' / '' without a page).
CREATE OR REPLACE VIEW sfpla.dash_session_segs AS
SELECT created_at::DATE AS day, hhash, country, sid, device, source, medium, campaign, region,
       count(*)::UBIGINT AS events, min(created_at) AS first_at, max(created_at) AS last_at,
       coalesce(min(lpad(CAST(epoch_ms(created_at) + 100000000000000 AS VARCHAR), 16, '0')
                    || url) FILTER (WHERE url != ''), '~') AS entry,
       coalesce(max(lpad(CAST(epoch_ms(created_at) + 100000000000000 AS VARCHAR), 16, '0')
                    || url) FILTER (WHERE url != ''), '') AS exit
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY created_at::DATE, hhash, country, sid, device, source, medium, campaign, region;

-- The dashboard's pages and referrers by segment (schema/096_dashboard_page_segments.sql):
-- dim 'page' (value: url) or 'referrer' (value: the host of `last`, or `last` without one).
CREATE OR REPLACE VIEW sfpla.dash_page_segs AS
SELECT dim, created_at::DATE AS day, hhash, country, device, source, medium, campaign, value,
       count(*)::UBIGINT AS events
FROM (
    SELECT 'page' AS dim, url AS value, created_at, hhash, country, device, source, medium,
           campaign, server, bot
    FROM sfpla.events WHERE url != ''
    UNION ALL
    SELECT 'referrer' AS dim,
           coalesce(nullif(regexp_extract(last, '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#@]+)', 1), ''),
                    last) AS value, created_at, hhash, country, device, source, medium,
           campaign, server, bot
    FROM sfpla.events WHERE last != ''
)
WHERE server = 0 AND bot = 0
GROUP BY dim, created_at::DATE, hhash, country, device, source, medium, campaign, value;

-- The dashboard's devices, browsers and OS by segment (schema/097_dashboard_device_segments.sql):
-- plain distinct counts here (ClickHouse keeps uniqCombined states).
CREATE OR REPLACE VIEW sfpla.dash_device_segs AS
SELECT created_at::DATE AS day, hhash, country, device, browser, os, source, medium, campaign,
       count(DISTINCT vid)::UBIGINT AS visitors, count(*)::UBIGINT AS events
FROM sfpla.events
WHERE server = 0 AND bot = 0
GROUP BY created_at::DATE, hhash, country, device, browser, os, source, medium, campaign;
