-- Consent records and jurisdictions (POST/GET /tr/v1/ppi/agree, GET /tr/v1/ppi/jds).
--
-- `agreed` is the full history: one row per consent decision, never overwritten (GDPR art. 7(1):
-- the controller must be able to demonstrate consent). The gateway writes only `agreed`; `id` is
-- minted at acceptance and is the dedup key of replays. `agreements` holds the latest decision
-- per visitor, filled from `agreed` by a materialized view (read it with FINAL).
-- Columns follow the original tracker's agreements/agreed tables; `id` is an addition.
-- `ip`/`iphash` hold what IPMode allows (never the raw IP unless IPMode is "full").
CREATE TABLE IF NOT EXISTS sfpla.agreed
(
    id UUID,
    vid UUID,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    compliances JSON(max_dynamic_paths = 8, max_dynamic_types = 2),
    cflags Int64,
    sid UUID,
    uid UUID,
    avid UUID,
    hhash String,
    app String,
    rel String,
    url String,
    ip String,
    iphash String,
    gaid String,
    idfa String,
    msid String,
    fbid String,
    country LowCardinality(String),
    region String,
    culture String,
    source String,
    medium String,
    campaign String,
    term String,
    ref UUID,
    rcode String,
    aff String,
    browser LowCardinality(String),
    bhash String,
    device LowCardinality(String),
    os LowCardinality(String),
    tz String,
    vp_w Int64,
    vp_h Int64,
    loc JSON(max_dynamic_paths = 8, max_dynamic_types = 2),
    lat Float64,
    lon Float64,
    zip String,
    owner UUID,
    oid UUID,
    org LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (vid, created_at, id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS sfpla.agreements AS sfpla.agreed
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY vid
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.agreements_mv TO sfpla.agreements AS
SELECT * FROM sfpla.agreed;

-- Privacy regimes and their consent rules, served by /ppi/jds for consent banners and used by
-- `python -m sfpltracker prune` (rows whose country/region falls in a jurisdiction are kept at
-- most `retention_days`; 0 = no limit of its own).
--   regulation, compliance, seq, rules, locs, updated_at: the original tracker's columns.
--   rules: {"consent": "opt-in" | "opt-out", "gpc": honour Global Privacy Control as an opt-out,
--           "cookie_days": longest consent cookie lifetime,
--           "categories": [{"name", "bit" (cflags bit), "required", "default", "retention_days"}]}
--   countries: ISO 3166-1 alpha-2 codes covered entirely.
--   regions: "<country>-<region>" pairs covered (ISO 3166-2 code or the region name GeoIP
--            writes, compared case-insensitively).
-- Seed rows carry updated_at 2025-01-01; an operator's edit with a later updated_at wins (FINAL).
CREATE TABLE IF NOT EXISTS sfpla.jurisdictions
(
    regulation LowCardinality(String),
    compliance String,
    seq UInt32,
    name String,
    rules JSON,
    locs JSON,
    countries Array(String),
    regions Array(String),
    retention_days UInt32,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (regulation, compliance, seq);

-- Idempotent seed: a row is inserted only when that exact version is not stored yet.
INSERT INTO sfpla.jurisdictions
    (regulation, compliance, seq, name, rules, locs, countries, regions, retention_days, updated_at)
SELECT regulation, compliance, seq, name, rules, locs, countries, regions, retention_days, updated_at
FROM
(
    SELECT 'GDPR' AS regulation, 'consent' AS compliance, toUInt32(1) AS seq,
        'EU/EEA General Data Protection Regulation + ePrivacy Directive' AS name,
        '{"consent":"opt-in","gpc":true,"cookie_days":395,"authority":"EDPB; CNIL guidance: analytics cookies 13 months, data 25 months","categories":[{"name":"essential","bit":256,"required":true,"default":true,"retention_days":0},{"name":"preferences","bit":512,"required":false,"default":false,"retention_days":395},{"name":"analytics","bit":1024,"required":false,"default":false,"retention_days":760},{"name":"personalization","bit":2048,"required":false,"default":false,"retention_days":395},{"name":"marketing","bit":4096,"required":false,"default":false,"retention_days":395}]}' AS rules,
        '{"countries":["AT","BE","BG","HR","CY","CZ","DK","EE","FI","FR","DE","GR","HU","IE","IT","LV","LT","LU","MT","NL","PL","PT","RO","SK","SI","ES","SE","IS","LI","NO"]}' AS locs,
        ['AT','BE','BG','HR','CY','CZ','DK','EE','FI','FR','DE','GR','HU','IE','IT','LV','LT','LU','MT','NL','PL','PT','RO','SK','SI','ES','SE','IS','LI','NO'] AS countries,
        CAST([], 'Array(String)') AS regions,
        toUInt32(760) AS retention_days,
        toDateTime64('2025-01-01 00:00:00', 3, 'UTC') AS updated_at
    UNION ALL
    SELECT 'UK GDPR', 'consent', toUInt32(1),
        'United Kingdom GDPR + Data Protection Act 2018 + PECR',
        '{"consent":"opt-in","gpc":true,"cookie_days":395,"authority":"ICO","categories":[{"name":"essential","bit":256,"required":true,"default":true,"retention_days":0},{"name":"preferences","bit":512,"required":false,"default":false,"retention_days":395},{"name":"analytics","bit":1024,"required":false,"default":false,"retention_days":760},{"name":"personalization","bit":2048,"required":false,"default":false,"retention_days":395},{"name":"marketing","bit":4096,"required":false,"default":false,"retention_days":395}]}',
        '{"countries":["GB"]}',
        ['GB'], CAST([], 'Array(String)'), toUInt32(760),
        toDateTime64('2025-01-01 00:00:00', 3, 'UTC')
    UNION ALL
    SELECT 'CCPA/CPRA', 'opt-out', toUInt32(1),
        'California Consumer Privacy Act as amended by the California Privacy Rights Act',
        '{"consent":"opt-out","gpc":true,"cookie_days":395,"authority":"California Privacy Protection Agency; GPC is a valid opt-out of sale/sharing (CCPA regs 7025)","categories":[{"name":"essential","bit":256,"required":true,"default":true,"retention_days":0},{"name":"preferences","bit":512,"required":false,"default":true,"retention_days":395},{"name":"analytics","bit":1024,"required":false,"default":true,"retention_days":730},{"name":"personalization","bit":2048,"required":false,"default":true,"retention_days":395},{"name":"marketing","bit":4096,"required":false,"default":true,"retention_days":395},{"name":"sale_sharing","bit":8192,"required":false,"default":true,"retention_days":395}]}',
        '{"countries":[],"regions":["US-CA"]}',
        CAST([], 'Array(String)'), ['US-CA', 'US-CALIFORNIA'], toUInt32(730),
        toDateTime64('2025-01-01 00:00:00', 3, 'UTC')
    UNION ALL
    SELECT 'LGPD', 'consent', toUInt32(1),
        'Brazil Lei Geral de Protecao de Dados (Lei 13.709/2018)',
        '{"consent":"opt-in","gpc":true,"cookie_days":395,"authority":"ANPD cookie guidance (2022)","categories":[{"name":"essential","bit":256,"required":true,"default":true,"retention_days":0},{"name":"preferences","bit":512,"required":false,"default":false,"retention_days":395},{"name":"analytics","bit":1024,"required":false,"default":false,"retention_days":730},{"name":"personalization","bit":2048,"required":false,"default":false,"retention_days":395},{"name":"marketing","bit":4096,"required":false,"default":false,"retention_days":395}]}',
        '{"countries":["BR"]}',
        ['BR'], CAST([], 'Array(String)'), toUInt32(730),
        toDateTime64('2025-01-01 00:00:00', 3, 'UTC')
)
WHERE (regulation, compliance, seq, updated_at) NOT IN
    (SELECT regulation, compliance, seq, updated_at FROM sfpla.jurisdictions);
