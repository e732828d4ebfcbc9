-- dzhook's database role, with the least privilege it needs.
--
-- Run it in the DZDESK database as a superuser, or on managed PostgreSQL
-- as the admin user (deploy/README.md), with the password as a psql
-- variable so that it never lives in a file:
--
--   psql -d dzdesk -v password="$DB_DZHOOK_PASSWORD" -f deploy/sql/role.sql
--
-- It is idempotent: run it again after a schema change or to set a new
-- password. The password passes through the server as a literal, so it
-- reaches the server log when log_statement is 'ddl' or 'all'.
--
-- What the role gets:
--   LOGIN REPLICATION          the replication connection (on AWS RDS and
--                              Aurora: membership in rds_replication)
--   SELECT                     on the mapped tables: users, requests,
--                              comments, request_slas and dzhook_outbox
--                              (when it exists)
--   schema dzhook, its own     the journal (journal.schema); dzhook
--                              creates its tables there
-- and nothing else: no SUPERUSER, CREATEDB, CREATEROLE or BYPASSRLS, no
-- ownership of DZDESK's tables, no write access to them.
--
-- dzhook must read every row of users and request_slas (it looks emails
-- up and reads open SLAs there; the stream sends every row anyway). With
-- row-level security on either, give the role a policy that lets it, as
-- the tables' owner, for each of them:
--
--   CREATE POLICY dzhook_read ON public.users FOR SELECT TO dzhook USING (true);
--
-- The start and `dzhook setup` refuse a role without SELECT on them or
-- one that row-level security limits, naming the table and the statement.
--
-- What the role cannot do, then, is what only the tables' owner may:
-- create the publication FOR TABLE … and set REPLICA IDENTITY FULL. Run
-- those once as the owner, with deploy/sql/publication.sql (or with
-- `dzhook setup` under the owner's DSN, as deploy/README.md shows), and
-- run dzhook with source.auto_setup: false:
--
--   CREATE PUBLICATION dzhook FOR TABLE users, requests, comments, request_slas, dzhook_outbox;
--   ALTER TABLE users REPLICA IDENTITY FULL;
--   ALTER TABLE requests REPLICA IDENTITY FULL;
--   ALTER TABLE request_slas REPLICA IDENTITY FULL;
--   SELECT pg_create_logical_replication_slot('dzhook', 'pgoutput');
--
-- A schema of your own, mapped with the mapping section of config.yaml,
-- needs the same grants on its tables: edit the table list below.

\set ON_ERROR_STOP on

\if :{?password}
\else
  \echo 'role.sql: give the role''s password: psql -v password=... -f role.sql'
  DO $$ BEGIN RAISE EXCEPTION 'role.sql needs the password as a psql variable: psql -v password=... -f role.sql'; END $$;
\endif
SELECT :'password' = '' AS password_empty \gset
\if :password_empty
  DO $$ BEGIN RAISE EXCEPTION 'role.sql: the password is empty'; END $$;
\endif

-- The role. CREATE ROLE has no IF NOT EXISTS; \gexec runs the statement
-- only when the SELECT returns it.
SELECT format('CREATE ROLE dzhook LOGIN PASSWORD %L', :'password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dzhook') \gexec
ALTER ROLE dzhook WITH LOGIN PASSWORD :'password';

-- An existing role must not carry more than it needs.
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'dzhook'
              AND (rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls)) THEN
    RAISE EXCEPTION 'role dzhook already exists with SUPERUSER, CREATEDB, CREATEROLE or BYPASSRLS; as a superuser run: ALTER ROLE dzhook NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS';
  END IF;
END $$;

-- Replication. A superuser sets the attribute; on AWS RDS and Aurora only
-- membership in rds_replication is possible; Cloud SQL's
-- cloudsqlsuperuser and Azure's azure_pg_admin may set the attribute.
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER ROLE dzhook REPLICATION;
  ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication') THEN
    GRANT rds_replication TO dzhook;
  ELSE
    ALTER ROLE dzhook REPLICATION;
  END IF;
END $$;

-- On managed PostgreSQL the admin is no superuser, and giving a schema to
-- dzhook needs the right to SET ROLE dzhook.
DO $$
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    GRANT dzhook TO CURRENT_USER;
  END IF;
END $$;

-- Read access to the mapped tables (people are looked up by id, the SLA
-- clock reads open SLAs).
SELECT format('GRANT CONNECT ON DATABASE %I TO dzhook', current_database()) \gexec
GRANT USAGE ON SCHEMA public TO dzhook;
GRANT SELECT ON TABLE public.users, public.requests, public.comments, public.request_slas TO dzhook;
DO $$
BEGIN
  IF to_regclass('public.dzhook_outbox') IS NOT NULL THEN
    GRANT SELECT ON TABLE public.dzhook_outbox TO dzhook;
  END IF;
END $$;

-- The journal's schema (journal.schema), owned by dzhook: it creates and
-- migrates its tables there, and nowhere else.
CREATE SCHEMA IF NOT EXISTS dzhook AUTHORIZATION dzhook;
ALTER SCHEMA dzhook OWNER TO dzhook;

-- No CREATE on the database: dzhook finds its schema in place and only
-- creates tables in it.
