-- Optional least-privilege roles for notifyq. Run once per cluster as a superuser (or a role with
-- CREATEROLE), in the application database, BEFORE the first `notifyq migrate`:
--     psql "$DATABASE_URL" -f sql/roles/01_create_roles.sql
-- Then run migrations as notifyq_owner (LOGIN it, or `SET ROLE notifyq_owner` first) and apply
-- 02_grants.sql after every `notifyq migrate`. Give real logins membership:
--     CREATE ROLE app LOGIN IN ROLE notifyq_producer;   CREATE ROLE worker LOGIN IN ROLE notifyq_worker;
--
--   notifyq_owner     owns the schema; runs migrations; needs no superuser.
--   notifyq_producer  may insert jobs (producer columns only) and call notifyq.enqueue(); nothing else.
--   notifyq_worker    what `notifyq serve` needs: read and update jobs, its workers row, the ledger.
--   notifyq_observer  read-only, for dashboards and `notifyq status`.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notifyq_owner') THEN
        CREATE ROLE notifyq_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notifyq_producer') THEN
        CREATE ROLE notifyq_producer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notifyq_worker') THEN
        CREATE ROLE notifyq_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notifyq_observer') THEN
        CREATE ROLE notifyq_observer NOLOGIN;
    END IF;
    -- The daemon's gauges read pg_stat_activity to report the oldest open transaction of any role;
    -- without this, other roles' transactions are invisible to it.
    GRANT pg_read_all_stats TO notifyq_worker;
    -- The owner creates the notifyq schema in this database.
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO notifyq_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO notifyq_producer, notifyq_worker, notifyq_observer',
                   current_database());
END
$$;
