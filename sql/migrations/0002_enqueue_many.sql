-- notifyq 0002: bulk enqueue for every language, as one statement.
--
-- notifyq.enqueue_many(tasks, payloads, queues, run_ats, priorities, dedup_keys, max_attempts, run_ins)
-- inserts one job per element of `tasks` and returns (pos, id): pos counts from 1 in input order, id is
-- the new job's id, or the id of the queued or running job that already holds that element's dedup_key
-- (like notifyq.enqueue()). Every other array is optional: NULL, or exactly as long as `tasks`, with
-- NULL elements for the defaults. Each row still passes the insert guard, so a bad row fails the whole
-- call with the guard's message naming the column.
CREATE FUNCTION notifyq.enqueue_many(
    tasks         text[],
    payloads      jsonb[] DEFAULT NULL,
    queues        text[] DEFAULT NULL,
    run_ats       timestamptz[] DEFAULT NULL,
    priorities    integer[] DEFAULT NULL,
    dedup_keys    text[] DEFAULT NULL,
    max_attempts  integer[] DEFAULT NULL,
    run_ins       interval[] DEFAULT NULL
) RETURNS TABLE (pos bigint, id bigint)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(tasks), 0);
    inserted bigint[];
    inserted_keys text[];
    found_pos bigint[];
    found_ids bigint[];
    missing bigint;
BEGIN
    IF (payloads IS NOT NULL AND cardinality(payloads) <> n)
        OR (queues IS NOT NULL AND cardinality(queues) <> n)
        OR (run_ats IS NOT NULL AND cardinality(run_ats) <> n)
        OR (priorities IS NOT NULL AND cardinality(priorities) <> n)
        OR (dedup_keys IS NOT NULL AND cardinality(dedup_keys) <> n)
        OR (max_attempts IS NOT NULL AND cardinality(max_attempts) <> n)
        OR (run_ins IS NOT NULL AND cardinality(run_ins) <> n) THEN
        RAISE EXCEPTION 'notifyq.enqueue_many: every array given must have as many elements as tasks (%)', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- Rows go in in input order, so the identity hands out ascending ids in that order: sorting the
    -- ids returned puts them back in input order. A row whose dedup_key is held is skipped. unnest,
    -- not subscripts: subscripting a text[] walks it, which made a large batch quadratic.
    WITH added AS (
        INSERT INTO notifyq.jobs AS j (task, payload, queue, run_at, priority, dedup_key, max_attempts)
        SELECT r.task,
               coalesce(r.payload, '{}'),
               coalesce(r.queue, 'default'),
               CASE
                   WHEN r.run_at IS NOT NULL AND r.run_in IS NOT NULL THEN notifyq.enqueue_many_both_times(r.pos)
                   ELSE coalesce(r.run_at, notifyq.now() + r.run_in, notifyq.now())
               END,
               coalesce(r.priority, 0),
               r.dedup_key,
               coalesce(r.max_attempts, notifyq.default_max_attempts())
        FROM unnest(tasks, payloads, queues, run_ats, priorities, dedup_keys, max_attempts, run_ins)
            WITH ORDINALITY AS r(task, payload, queue, run_at, priority, dedup_key, max_attempts, run_in, pos)
        ORDER BY r.pos
        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running')
        DO NOTHING
        RETURNING j.id, j.dedup_key
    )
    SELECT array_agg(a.id ORDER BY a.id), array_agg(a.dedup_key ORDER BY a.id)
    INTO inserted, inserted_keys
    FROM added AS a;

    IF cardinality(array_remove(coalesce(dedup_keys, '{}'), NULL)) = 0 THEN
        RETURN QUERY SELECT o.pos, o.id FROM unnest(inserted) WITH ORDINALITY AS o(id, pos);
        RETURN;
    END IF;
    -- Rows without a key were all inserted, in order; a row with a key gets whichever job holds the key
    -- now (this call's own insert, or the job that held it already).
    WITH given AS (
        SELECT d.key, d.pos FROM unnest(dedup_keys) WITH ORDINALITY AS d(key, pos)
    ), keyless AS (
        SELECT g.pos, row_number() OVER (ORDER BY g.pos) AS rank FROM given AS g WHERE g.key IS NULL
    ), plain AS (
        SELECT a.id, row_number() OVER (ORDER BY a.id) AS rank
        FROM unnest(inserted, inserted_keys) AS a(id, key) WHERE a.key IS NULL
    ), matched AS (
        SELECT k.pos, p.id FROM keyless AS k JOIN plain AS p ON p.rank = k.rank
        UNION ALL
        SELECT g.pos, j.id FROM given AS g
        JOIN notifyq.jobs AS j ON j.dedup_key = g.key AND j.state IN ('queued', 'running')
    )
    SELECT array_agg(m.pos ORDER BY m.pos), array_agg(m.id ORDER BY m.pos) INTO found_pos, found_ids
    FROM matched AS m;
    -- A holder that finished between the insert and the look-up freed its key: take those rows one by
    -- one through the single-row path, which retries until it has an id.
    FOR missing IN
        SELECT g.pos FROM generate_series(1, n) AS g(pos) WHERE NOT g.pos = ANY(coalesce(found_pos, '{}'))
    LOOP
        found_pos := found_pos || missing;
        found_ids := found_ids || notifyq.enqueue(tasks[missing], payloads[missing], queues[missing],
                                                  run_ats[missing], priorities[missing], dedup_keys[missing],
                                                  max_attempts[missing], run_ins[missing]);
    END LOOP;
    RETURN QUERY SELECT f.pos, f.id FROM unnest(found_pos, found_ids) AS f(pos, id) ORDER BY f.pos;
END
$$;

-- Refuses a row that gives both times, naming its position (a function, because a CASE cannot RAISE).
CREATE FUNCTION notifyq.enqueue_many_both_times(pos bigint) RETURNS timestamptz
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION 'notifyq.enqueue_many: element % gives run_ats and run_ins; give one or neither', pos
        USING ERRCODE = 'invalid_parameter_value';
END
$$;

REVOKE EXECUTE ON FUNCTION notifyq.enqueue_many(text[], jsonb[], text[], timestamptz[], integer[], text[],
                                                integer[], interval[]) FROM PUBLIC;
