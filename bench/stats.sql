-- The statements of Store::stats (shared/src/store/stats.rs), for
-- bench/stats.sh: keep them the same.
SELECT priority,
       count(*) FILTER (WHERE state IN ('queued', 'retrying')
                          AND GREATEST(updated_at, next_attempt_at) <= now()),
       count(*) FILTER (WHERE state IN ('queued', 'retrying')
                          AND GREATEST(updated_at, next_attempt_at) > now()),
       count(*) FILTER (WHERE state IN ('processing', 'sending')),
       EXTRACT(EPOCH FROM now() - min(created_at) FILTER (
           WHERE state IN ('queued', 'retrying')
             AND GREATEST(updated_at, next_attempt_at) <= now()))::float8
FROM deliveries
WHERE state IN ('queued', 'retrying', 'processing', 'sending')
  AND ($1::text IS NULL OR tenant = $1)
GROUP BY priority;
SELECT priority, counted, sum(n)::int8 FROM job_counts
WHERE ($1::text IS NULL OR tenant = $1)
GROUP BY priority, counted;
SELECT count(*) FROM worker_leases WHERE expires_at > now();
