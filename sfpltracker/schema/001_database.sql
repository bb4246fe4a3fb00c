-- sfpltracker schema, modern ClickHouse dialect (chDB / ClickHouse 25.3+).
-- The loader refuses an older server; raise this line when a file needs a newer feature
-- (25.3: the JSON column type without experimental settings).
-- requires: ClickHouse >= 25.3
-- Files run in name order; every statement is idempotent (IF NOT EXISTS), so loading twice is
-- harmless. Statements end with ";" at the end of a line. Write every object as `sfpla.<name>`:
-- the loader renames the database and, in cluster mode, rewrites tables into <name>_local
-- (Replicated engine, ON CLUSTER) plus a Distributed table under the public name.

CREATE DATABASE IF NOT EXISTS sfpla;
