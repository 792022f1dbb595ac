-- The statements of Store::stats (shared/src/store/stats.rs), for
-- bench/stats.sh: keep them the same.
SELECT priority, sum(ready)::int8, sum(scheduled)::int8, sum(processing)::int8,
       EXTRACT(EPOCH FROM now() - min(oldest))::float8
FROM (SELECT priority,
             count(*) FILTER (WHERE GREATEST(updated_at, next_attempt_at) <= now())
                 AS ready,
             count(*) FILTER (WHERE GREATEST(updated_at, next_attempt_at) > now())
                 AS scheduled,
             0::int8 AS processing,
             min(created_at) FILTER (WHERE GREATEST(updated_at, next_attempt_at) <= now())
                 AS oldest
      FROM deliveries
      WHERE state IN ('queued', 'retrying') AND ($1::text IS NULL OR tenant = $1)
      GROUP BY priority
      UNION ALL
      SELECT priority, 0, 0, count(*), NULL
      FROM deliveries
      WHERE state IN ('processing', 'sending') AND ($1::text IS NULL OR tenant = $1)
      GROUP BY priority) live
GROUP BY priority;
SELECT priority, counted, sum(n)::int8 FROM job_counts
WHERE ($1::text IS NULL OR tenant = $1)
GROUP BY priority, counted;
SELECT count(*) FROM worker_leases WHERE expires_at > now();
