-- What the original's NATS consumer wrote (notify/consumer.py; reference c.20, d): operational
-- logs and "latest message" updates. `counters` (070_original.sql) also takes the consumer's
-- `tic.count` rows: a SummingMergeTree, so they add to the same (id, date) totals as the
-- gateway's own `vids_created`.

-- Log lines; `prune --logs-only` deletes them by `created_at` (privacy/catalogue.py LOG_TABLES).
CREATE TABLE IF NOT EXISTS sfpla.logs
(
    id UUID,
    ldate Date,
    created_at DateTime64(3, 'UTC'),
    ltime DateTime64(3, 'UTC'),
    topic String,
    name String,
    host String,
    hostname String,
    oid UUID,
    org LowCardinality(String),
    owner UUID,
    ip String,
    iphash String,
    level Int32,
    msg String,
    params JSON(max_dynamic_paths = 16, max_dynamic_types = 4)
)
-- Replacing (the original's was plain): a row sent twice (a replay) is one line, and
-- `FROM sfpla.logs FINAL` works as on the other tables.
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ldate)
ORDER BY (created_at, id)
SETTINGS non_replicated_deduplication_window = 1000;

-- The latest message per id (Replacing on updated_at, as the original's).
CREATE TABLE IF NOT EXISTS sfpla.updates
(
    id String,
    updated_at DateTime64(3, 'UTC'),
    msg String
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY id
SETTINGS non_replicated_deduplication_window = 1000;
