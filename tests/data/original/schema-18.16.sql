-- The original tracker's ClickHouse tables (sfproductlabs/tracker, snapshot cb31f36,
-- .setup/clickhouse/{core,analytics,auth,compliance,messaging,users}.1.sql), the subset its code
-- writes or reads, as Debian's clickhouse-server 18.16 accepts it. Transcribed from the column
-- lists, engines and sort keys in /work/shared/reference/original-behaviour.md (sections c and
-- d.2); tests/test_migrate.py loads it and writes rows the way the original's writer does.
--
-- What differs from the original's files, and why (18.16 has no such thing):
--   * no ON CLUSTER / Replicated*MergeTree / Distributed `<name>_local` pairs: one plain table
--     under the public name (the name the original's code reads and writes);
--   * DateTime64(3) -> DateTime, JSON -> String, LowCardinality(String) -> String;
--   * no projections, no `SETTINGS enable_json_type`;
--   * mthreads (135 columns), mstore (50), mtriage (41) and orgs (28) keep a subset of columns
--     (the keys and the columns every row carries); the migration maps columns by name, so the
--     others behave alike.
-- Sort keys and engines (what the migration reads with FINAL, and its resume position) are the
-- original's.

CREATE DATABASE IF NOT EXISTS sfpla;

CREATE TABLE sfpla.events (
    eid UUID, oid UUID, org String, vid UUID, device_id UUID, sid UUID,
    hhash String, app String, rel String, cflags Int64, created_at DateTime,
    uid UUID, tid UUID, last String, url String, ip String, iphash String,
    lat Float64, lon Float64, ptyp String, bhash String, auth_id UUID, duration Int64,
    xid String, split String, ename String, source String, medium String, campaign String,
    content String, country String, region String, city String, zip String, term String,
    etyp String, ver Int32, sink String, score Float64, params String, invoice_id UUID,
    targets String, relation String, rid UUID, ja4h String, gaid String, idfa String,
    msid String, fbid String, culture String, ref UUID, rcode String, aff String,
    arm_id String, mcid String, browser String, device String, os String, tz String,
    vp_w Int64, vp_h Int64
) ENGINE = MergeTree() PARTITION BY (oid, toYYYYMM(created_at)) ORDER BY (created_at, eid);

CREATE TABLE sfpla.ips (hhash String, ip String, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY (hhash, ip, date);

CREATE TABLE sfpla.hits (hhash String, url String, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY (hhash, url, date);

CREATE TABLE sfpla.referrers (hhash String, url String, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY (hhash, url, date);

CREATE TABLE sfpla.reqs (hhash String, vid UUID, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY (hhash, vid, date);

CREATE TABLE sfpla.browsers (hhash String, bhash String, browser String, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY (hhash, bhash, browser, date);

CREATE TABLE sfpla.dailies (ip String, day Date, total UInt64)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(day) ORDER BY (ip, day);

CREATE TABLE sfpla.counters (id String, total UInt64, date Date)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(date) ORDER BY id;

CREATE TABLE sfpla.outcomes (hhash String, outcome String, sink String, created Date, url String, total UInt64)
ENGINE = SummingMergeTree(total) PARTITION BY toYYYYMM(created) ORDER BY (hhash, outcome, sink, url, created);

CREATE TABLE sfpla.hosts (hhash String, hostname String, created_at DateTime)
ENGINE = ReplacingMergeTree(created_at) ORDER BY (hhash, hostname);

CREATE TABLE sfpla.userhosts (hhash String, uid UUID, vid UUID, sid UUID, created_at DateTime)
ENGINE = ReplacingMergeTree(created_at) PARTITION BY toYYYYMM(created_at) ORDER BY (hhash, uid, vid);

CREATE TABLE sfpla.usernames (hhash String, uhash String, vid UUID, sid UUID, created_at DateTime)
ENGINE = ReplacingMergeTree(created_at) PARTITION BY toYYYYMM(created_at) ORDER BY (hhash, uhash, vid);

CREATE TABLE sfpla.emails (hhash String, ehash String, vid UUID, sid UUID, created_at DateTime)
ENGINE = ReplacingMergeTree(created_at) PARTITION BY toYYYYMM(created_at) ORDER BY (hhash, ehash);

CREATE TABLE sfpla.cells (hhash String, chash String, vid UUID, sid UUID, created_at DateTime)
ENGINE = ReplacingMergeTree(created_at) PARTITION BY toYYYYMM(created_at) ORDER BY (hhash, chash, vid);

CREATE TABLE sfpla.agreements (
    vid UUID, created_at DateTime, updated_at DateTime, compliances String, cflags Int64,
    sid UUID, uid UUID, avid UUID, hhash String, app String, rel String, url String,
    ip String, iphash String, gaid String, idfa String, msid String, fbid String,
    country String, region String, culture String, source String, medium String,
    campaign String, term String, ref UUID, rcode String, aff String, browser String,
    bhash String, device String, os String, tz String, vp_w Int64, vp_h Int64, loc String,
    lat Float64, lon Float64, zip String, owner UUID, oid UUID, org String
) ENGINE = ReplacingMergeTree(updated_at) ORDER BY (vid, created_at, updated_at);

CREATE TABLE sfpla.agreed AS sfpla.agreements
ENGINE = ReplacingMergeTree(updated_at) ORDER BY (vid, created_at, updated_at);

CREATE TABLE sfpla.redirects (
    hhash String, urlfrom String, urlto String, oid UUID, org String,
    updated_at DateTime, updater UUID, created_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) ORDER BY urlfrom;

CREATE TABLE sfpla.redirect_history (
    urlfrom String, hostfrom String, slugfrom String, urlto String, hostto String,
    pathto String, searchto String, oid UUID, org String, updater UUID, updated_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) PARTITION BY oid ORDER BY (urlfrom, updated_at);

CREATE TABLE sfpla.logs (
    id UUID, ldate Date, created_at DateTime, ltime DateTime, topic String, name String,
    host String, hostname String, oid UUID, org String, owner UUID, ip String,
    iphash String, level Int32, msg String, params String
) ENGINE = MergeTree() PARTITION BY toYYYYMM(ldate) ORDER BY (created_at, id);

CREATE TABLE sfpla.updates (id String, updated_at DateTime, msg String)
ENGINE = ReplacingMergeTree(updated_at) ORDER BY id;

CREATE TABLE sfpla.payments (
    id UUID, oid UUID, org String, tid UUID, uid UUID, vid UUID, sid UUID, invid UUID,
    orid UUID, invoiced_at DateTime, product String, product_id UUID, pcat String,
    man String, model String, qty Float64, duration Int64, starts DateTime, ends DateTime,
    price Float64, discount Float64, revenue Float64, margin Float64, cost Float64,
    tax Float64, tax_rate Float64, commission Float64, referral Float64, fees Float64,
    subtotal Float64, total Float64, payment Float64, currency String DEFAULT 'USD',
    country String, rcode String, region String, campaign_id String, paid_at DateTime,
    created_at DateTime, updated_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) PARTITION BY (toYYYYMM(created_at), oid) ORDER BY (oid, org, id);

CREATE TABLE sfpla.ltv (
    hhash String, id UUID, id_type String, paid Float64, oid UUID, org String,
    updated_at DateTime, updater UUID, created_at DateTime, owner UUID
) ENGINE = SummingMergeTree(paid) ORDER BY (hhash, id, id_type);

CREATE TABLE sfpla.mthreads (
    tid UUID, alias String, xstatus String, name String, ddata String, provider String,
    medium String, ptyp String, etyp String, ename String, auth_name String,
    oid UUID, org String, owner UUID, uid UUID, vid UUID, updater UUID,
    created_at DateTime, updated_at DateTime
) ENGINE = ReplacingMergeTree() PARTITION BY (oid, toYYYYMM(created_at)) ORDER BY (oid, org, tid, created_at);

CREATE TABLE sfpla.mstore (
    tid UUID, mid UUID, subject String, msg String, data String, urgency Int32,
    svc String, xid String, split String, createdms Int64, oid UUID, org String,
    owner UUID, uid UUID, vid UUID, updater UUID, created_at DateTime, updated_at DateTime
) ENGINE = MergeTree() PARTITION BY (oid, toYYYYMM(created_at)) ORDER BY (oid, org, tid, mid, created_at);

CREATE TABLE sfpla.mtriage (
    tid UUID, mid UUID, subject String, msg String, data String, urgency Int32,
    svc String, keep UInt8, oid UUID, org String, owner UUID, uid UUID, vid UUID,
    updater UUID, created_at DateTime, updated_at DateTime
) ENGINE = MergeTree() PARTITION BY toYYYYMM(created_at) ORDER BY (tid, mid, created_at);

CREATE TABLE sfpla.impression_daily (
    oid UUID, org String, tid UUID, campaign_id String, day Date, variant_id String,
    total_impressions Int64, anonymous_impressions Int64, identified_impressions Int64,
    unique_visitors Int64, conversions Int64, updated_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) PARTITION BY (oid, toYYYYMM(day)) ORDER BY (oid, org, tid, day, variant_id);

CREATE TABLE sfpla.accounts (
    uid UUID, pwd String, ip String, msg String, expires DateTime, creds String,
    created_at DateTime, updated_at DateTime, owner UUID
) ENGINE = ReplacingMergeTree(updated_at) PARTITION BY toYYYYMM(created_at) ORDER BY uid;

CREATE TABLE sfpla.jurisdictions (
    regulation String, compliance String, seq UInt32, rules String, locs String, updated_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) PARTITION BY regulation ORDER BY (regulation, compliance, seq);

CREATE TABLE sfpla.orgs (
    oid UUID, org String, name String, ddata String, owner UUID, created_at DateTime, updated_at DateTime
) ENGINE = ReplacingMergeTree(updated_at) ORDER BY (oid, org);

CREATE TABLE sfpla.sequences (name String, seq UInt32, updated_at DateTime)
ENGINE = ReplacingMergeTree(updated_at) ORDER BY name;

-- The original's seeds: the schema version and the demo admin (password "password"), as
-- INSERT ... SELECT (the native driver sends VALUES rows as data blocks).
INSERT INTO sfpla.sequences (name, seq, updated_at) SELECT 'DB_VER', 3, now();
INSERT INTO sfpla.accounts (uid, pwd, created_at, updated_at)
SELECT toUUID('14fb0860-b4bf-11e9-8971-7b80435315ac'), 'W6ph5Mm5Pz8GgiULbPgzG37mj9g=', now(), now();
