//! The outbox: every job state change an application may want to hear of
//! writes its `events` row, and one `webhook_deliveries` row per endpoint
//! of the job's tenant subscribed to the event's type, **in the statement
//! that makes the change**. So no outcome is recorded without its event,
//! and no event exists for an outcome that was not recorded (a statement
//! commits whole or not at all). The dispatcher (`worker/src/webhooks`)
//! delivers the rows afterwards, at least once.
//!
//! The types are [`crate::domain::webhooks::EventType`]'s; the SQL names
//! them as literals.
//!
//! A statement includes [`outbox!`] as its last common table expressions,
//! after the one (named by the macro's first argument) that returns the
//! changed rows with the columns of [`deliveries`](../../../migrations).

/// The event's `data` object, from a `deliveries` row (or a CTE returning
/// its columns): what a receiver needs to act on the outcome without
/// another request.
macro_rules! event_data {
    () => {
        "jsonb_build_object(
            'job_id', job_id, 'idempotency_key', idempotency_key, 'tenant', tenant,
            'to', task->'to', 'cc', COALESCE(task->'cc', '[]'::jsonb),
            'bcc', COALESCE(task->'bcc', '[]'::jsonb),
            'metadata', COALESCE(task->'metadata', '{}'::jsonb),
            'attempts', attempts, 'smtp_reply', smtp_reply, 'error', last_error,
            'refused_recipients', COALESCE(refused_recipients, '[]'::jsonb))"
    };
}
pub(crate) use event_data;

/// The outbox CTEs (`event`, `fan_out`) for the rows returned by CTE
/// `$rows`, as events of type `$type` (an SQL expression: a quoted
/// literal, or a `CASE` on the rows' columns). `$data` is the SQL of the
/// event's data (default [`event_data!`]), `$filter` a condition on the
/// rows (default all). Starts with a comma: put it right after `$rows`'s
/// CTE.
macro_rules! outbox {
    ($rows:literal, $type:expr) => {
        $crate::store::outbox::outbox!($rows, $type, $crate::store::outbox::event_data!(), "true")
    };
    ($rows:literal, $type:expr, $data:expr, $filter:expr) => {
        concat!(
            ",
    event AS (
        INSERT INTO events (tenant, type, job_id, data)
        SELECT tenant, ",
            $type,
            ", job_id, ",
            $data,
            " FROM ",
            $rows,
            " WHERE ",
            $filter,
            "
        RETURNING id, tenant, type),
    fan_out AS (
        INSERT INTO webhook_deliveries (endpoint_id, event_id, state, next_attempt_at)
        SELECT w.id, event.id,
               CASE WHEN w.failing_since IS NULL THEN 'pending' ELSE 'held' END, now()
        FROM event JOIN webhooks w
          ON w.tenant = event.tenant AND event.type = ANY (w.event_types))"
        )
    };
}
pub(crate) use outbox;
