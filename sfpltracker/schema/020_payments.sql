-- One row per payment line item (POST /tr/v1/ltv/). `id` is minted at acceptance and is the
-- dedup key. `hhash` (an addition) is the host the payment was reported on.
CREATE TABLE IF NOT EXISTS sfpla.payments
(
    id UUID,
    hhash String,
    oid UUID,
    org LowCardinality(String),
    tid UUID,
    uid UUID,
    vid UUID,
    sid UUID,
    invid UUID,
    orid UUID,
    invoiced_at DateTime64(3, 'UTC'),
    product String,
    product_id UUID,
    pcat String,
    man String,
    model String,
    qty Float64,
    duration Int64,
    starts DateTime64(3, 'UTC'),
    ends DateTime64(3, 'UTC'),
    price Float64,
    discount Float64,
    revenue Float64,
    margin Float64,
    cost Float64,
    tax Float64,
    tax_rate Float64,
    commission Float64,
    referral Float64,
    fees Float64,
    subtotal Float64,
    total Float64,
    payment Float64,
    currency String DEFAULT 'USD',
    country String,
    rcode String,
    region String,
    campaign_id String,
    paid_at DateTime64(3, 'UTC'),
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    updater UUID,
    owner UUID
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (oid, id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Lifetime value per user (id_type 'uid'), visitor ('vid') and order ('orid', keyed by the
-- line item's orid). Summed by ClickHouse from payments, so a payment counts exactly once.
CREATE TABLE IF NOT EXISTS sfpla.ltv
(
    hhash String,
    id UUID,
    id_type LowCardinality(String),
    paid Float64,
    oid UUID,
    org LowCardinality(String),
    updated_at DateTime64(3, 'UTC'),
    updater UUID,
    created_at DateTime64(3, 'UTC'),
    owner UUID
)
ENGINE = SummingMergeTree(paid)
ORDER BY (hhash, id, id_type)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.ltv_mv TO sfpla.ltv AS
SELECT hhash, id_pair.1 AS id, id_pair.2 AS id_type, revenue AS paid, oid, org, updated_at,
       updater, created_at, owner
FROM sfpla.payments
ARRAY JOIN [(uid, 'uid'), (vid, 'vid'), (orid, 'orid')] AS id_pair
WHERE id_pair.1 != toUUID('00000000-0000-0000-0000-000000000000');

CREATE TABLE IF NOT EXISTS sfpla.ltvu
(
    hhash String,
    uid UUID,
    oid UUID,
    paid Float64,
    payments UInt64,
    updated_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = SummingMergeTree((paid, payments))
ORDER BY (hhash, uid, oid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.ltvu_mv TO sfpla.ltvu AS
SELECT hhash, uid, oid, revenue AS paid, toUInt64(1) AS payments, updated_at
FROM sfpla.payments
WHERE uid != toUUID('00000000-0000-0000-0000-000000000000');

CREATE TABLE IF NOT EXISTS sfpla.ltvv
(
    hhash String,
    vid UUID,
    oid UUID,
    paid Float64,
    payments UInt64,
    updated_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = SummingMergeTree((paid, payments))
ORDER BY (hhash, vid, oid)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS sfpla.ltvv_mv TO sfpla.ltvv AS
SELECT hhash, vid, oid, revenue AS paid, toUInt64(1) AS payments, updated_at
FROM sfpla.payments
WHERE vid != toUUID('00000000-0000-0000-0000-000000000000');
