-- Short links (API.md section 3): API accounts, the links, and the history of every change.
-- Column names and order follow the original tracker's tables; additions are marked.

-- API credentials of the short-link admin API. `pwd` holds a slow salted hash
-- (`scrypt$N$r$p$salt$hash`), never the secret. No account is seeded: create one with
-- `python -m sfpltracker account create --org NAME`. Additions: `oid`, `org` (the
-- organisation whose links the account manages).
CREATE TABLE IF NOT EXISTS sfpla.accounts
(
    uid UUID,
    pwd String,
    ip String,
    msg String,
    expires DateTime64(3, 'UTC'),
    creds String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    owner UUID,
    oid UUID,
    org LowCardinality(String)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY uid;

-- One row per short link, the newest version wins (read with FINAL). `urlfrom` is the lookup
-- key: host (lower-cased, no port) + path (percent-decoded, lower-cased, no trailing slash).
-- A delete is a newer version with `deleted = 1`, so every process sharing the store sees it.
-- Additions: `id` (stable across updates; events carry it in `rid`), `host`, `path`, `status`
-- (301/302/307/308), `expires` (epoch 0 = never), `forward_query`, `deleted`.
CREATE TABLE IF NOT EXISTS sfpla.redirects
(
    hhash String,
    urlfrom String,
    urlto String,
    oid UUID,
    org LowCardinality(String),
    updated_at DateTime64(3, 'UTC'),
    updater UUID,
    created_at DateTime64(3, 'UTC'),
    id UUID,
    host String,
    path String,
    status UInt16 DEFAULT 302,
    expires DateTime64(3, 'UTC'),
    forward_query UInt8,
    deleted UInt8
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY urlfrom;

-- Every create, update and delete, appended (it is the audit trail, and its row count tells
-- other gateways sharing the store that links changed). `pathto` / `searchto` are the
-- destination's path and query (the original stored the from-path in `pathto`).
-- Additions: `id`, `action` (create/update/delete), `status`, `expires`, `forward_query`.
-- ReplacingMergeTree, as the original's, so its `SELECT ... FROM redirect_history FINAL` runs:
-- the key keeps each change (a row only collapses with an identical change of the same
-- millisecond). A MergeTree table an older schema made is rebuilt as this one at start
-- (store/schema.py engine_changes).
CREATE TABLE IF NOT EXISTS sfpla.redirect_history
(
    urlfrom String,
    hostfrom String,
    slugfrom String,
    urlto String,
    hostto String,
    pathto String,
    searchto String,
    oid UUID,
    org LowCardinality(String),
    updater UUID,
    updated_at DateTime64(3, 'UTC'),
    id UUID,
    action LowCardinality(String),
    status UInt16,
    expires DateTime64(3, 'UTC'),
    forward_query UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY (urlfrom, updated_at, action);
