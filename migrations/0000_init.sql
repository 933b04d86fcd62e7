-- jobfleet's own schema; queue tables and the jobs' tables follow in later migrations.
CREATE SCHEMA IF NOT EXISTS jobfleet;
