-- sfpltracker schema, modern ClickHouse dialect (chDB / ClickHouse 24.8+).
-- Files run in name order; every statement is idempotent (IF NOT EXISTS), so loading twice is
-- harmless. Statements end with ";" at the end of a line. Write every object as `sfpla.<name>`:
-- the loader renames the database and, in cluster mode, rewrites tables into <name>_local
-- (Replicated engine, ON CLUSTER) plus a Distributed table under the public name.

CREATE DATABASE IF NOT EXISTS sfpla;
