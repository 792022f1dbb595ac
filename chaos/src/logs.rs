//! What the workers' own logs say: the jobs whose `250` a worker read and
//! recorded. The worker logs an INFO event `"sent"` in its `job` span once
//! it has recorded a send (`runner::record`); with `LOG_FORMAT=json` each
//! line is one JSON object whose `spans` carry the job id and its
//! idempotency key.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Where the worker logs the recorded send, and with which message.
const SENT_TARGET: &str = "sendonce_worker::runner";
const SENT_MESSAGE: &str = "sent";
/// Worker log files in a run's log directory start with this.
const WORKER_LOG_PREFIX: &str = "worker";

/// Every recorded send in the worker logs of `log_dir`: job id to
/// idempotency key.
pub fn sent_jobs(log_dir: &Path) -> anyhow::Result<HashMap<String, String>> {
    let mut jobs = HashMap::new();
    let entries = std::fs::read_dir(log_dir)
        .with_context(|| format!("failed to list {}", log_dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("failed to list {}", log_dir.display()))?
            .path();
        let is_worker_log = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(WORKER_LOG_PREFIX) && name.ends_with(".log"));
        if is_worker_log {
            // A log cut by SIGKILL may end in bytes that are not UTF-8.
            let bytes = std::fs::read(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            jobs.extend(String::from_utf8_lossy(&bytes).lines().filter_map(sent_job));
        }
    }
    Ok(jobs)
}

/// The job id and `tenant/idempotency key` of a `"sent"` line (the tenant
/// `default` when the span has none); `None` for any other line, including
/// lines that are not JSON (a line cut short by a SIGKILL, a panic).
pub fn sent_job(line: &str) -> Option<(String, String)> {
    let line: Value = serde_json::from_str(line).ok()?;
    if line["message"] != SENT_MESSAGE || line["target"] != SENT_TARGET {
        return None;
    }
    let span = line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find(|span| span["name"] == "job")?;
    let field = |name: &str| span[name].as_str().map(str::to_owned);
    let tenant = field("tenant").unwrap_or_else(|| "default".to_owned());
    Some((
        field("job_id")?,
        format!("{tenant}/{}", field("idempotency_key")?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as `sendonce-worker` writes it (`LOG_FORMAT=json`).
    const SENT: &str = r#"{"timestamp":"2026-12-03T04:20:00.123456Z","level":"INFO","message":"sent","smtp_reply":"250 2.0.0 OK queued","target":"sendonce_worker::runner","spans":[{"job_id":"0193a1b2-0000-7000-8000-000000000001","idempotency_key":"chaos:7","name":"job"}]}"#;

    #[test]
    fn a_sent_line_gives_its_job() {
        assert_eq!(
            sent_job(SENT),
            Some((
                "0193a1b2-0000-7000-8000-000000000001".to_owned(),
                "default/chaos:7".to_owned()
            ))
        );
        let of_a_tenant = SENT.replace(r#""name":"job""#, r#""tenant":"chaos2","name":"job""#);
        assert_eq!(
            sent_job(&of_a_tenant).map(|(_, key)| key).as_deref(),
            Some("chaos2/chaos:7")
        );
    }

    #[test]
    fn other_lines_give_nothing() {
        let duplicate = SENT.replace(
            r#""message":"sent""#,
            r#""message":"duplicate: key already held by another job; skipped""#,
        );
        let elsewhere = SENT.replace("sendonce_worker::runner", "sendonce_worker::mailer");
        let no_span = r#"{"level":"INFO","message":"sent","target":"sendonce_worker::runner"}"#;
        for line in [
            duplicate.as_str(),
            elsewhere.as_str(),
            no_span,
            &SENT[..SENT.len() / 2],
            "thread 'main' panicked",
            "",
        ] {
            assert_eq!(sent_job(line), None, "{line}");
        }
    }

    #[test]
    fn only_worker_logs_are_read() {
        let dir = std::env::temp_dir().join(format!("sendonce-logs-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        std::fs::write(dir.join("worker2-3.log"), format!("not json\n{SENT}\n")).expect("write");
        let other = SENT.replace("000000000001", "000000000002");
        std::fs::write(dir.join("api.log"), other).expect("write");

        let jobs = sent_jobs(&dir);

        std::fs::remove_dir_all(&dir).expect("remove the temp dir");
        let jobs = jobs.expect("the logs read");
        assert_eq!(
            jobs,
            HashMap::from([(
                "0193a1b2-0000-7000-8000-000000000001".to_owned(),
                "default/chaos:7".to_owned()
            )])
        );
    }
}
