//! The console's pages as askama templates (`api/templates/console/`), and
//! the rows they show, formatted here so templates only place text.

use askama::Template;
use chrono::{DateTime, Utc};

/// The header of every signed-in page: who is signed in, which sections
/// their scopes open, and the sign-out form's CSRF token.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The section shown, to mark its link.
    pub active: &'static str,
    /// The token's `sub`.
    pub who: String,
    /// The tenant, or "all tenants".
    pub tenant: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Links the session's scopes open.
    pub jobs: bool,
    pub dead_letters: bool,
    pub suppressions: bool,
    pub webhooks: bool,
}

/// A time as the console writes it: UTC to the second.
pub fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or "—".
pub fn time_or_dash(at: Option<&DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".to_owned(), time)
}

/// How long ago `at` was (or how long until it, for a future one), coarse:
/// "42 s", "5 min", "3 h 20 min", "2 d 4 h".
pub fn age(at: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    let secs = (*now - *at).num_seconds();
    let (n, suffix) = if secs < 0 {
        (-secs, " from now")
    } else {
        (secs, " ago")
    };
    let text = match n {
        0..60 => format!("{n} s"),
        60..3600 => format!("{} min", n / 60),
        3600..86_400 => format!("{} h {} min", n / 3600, n % 3600 / 60),
        _ => format!("{} d {} h", n / 86_400, n % 86_400 / 3600),
    };
    format!("{text}{suffix}")
}

/// An error page (`ConsoleError`).
#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

/// The sign-in form.
#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub csrf: String,
    pub error: Option<String>,
}

/// A worker on the overview.
#[derive(Debug)]
pub struct WorkerRow {
    pub id: String,
    pub in_flight: i64,
    pub last_heartbeat: String,
    pub alive: bool,
}

/// The overview.
#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct OverviewPage {
    pub nav: Nav,
    /// Fleet-wide queue depths and workers: operators (`tenants:all`) only.
    pub fleet: Option<Fleet>,
    pub sent: i64,
    pub failed: i64,
    pub uncertain: i64,
    pub suppressed: i64,
    pub scheduled: i64,
    pub in_flight: i64,
    pub oldest_ready: String,
    pub now: String,
}

/// What only an operator sees on the overview.
#[derive(Debug)]
pub struct Fleet {
    pub ready: u64,
    pub scheduled: u64,
    pub processing: u64,
    /// Where the depths came from ("counted now" or the housekeeper's).
    pub depths_source: &'static str,
    pub workers: Vec<WorkerRow>,
}

/// A job in a list.
#[derive(Debug)]
pub struct JobRow {
    pub job_id: String,
    pub tenant: String,
    pub key: String,
    pub state: String,
    pub attempts: i32,
    pub to: String,
    pub subject: String,
    pub created_at: String,
}

/// The job search.
#[derive(Template)]
#[template(path = "console/jobs.html")]
pub struct JobsPage {
    pub nav: Nav,
    pub q: String,
    /// `None` before a search.
    pub results: Option<Vec<JobRow>>,
    pub error: Option<String>,
}

/// A line of a job's history.
#[derive(Debug)]
pub struct HistoryRow {
    pub at: String,
    pub what: String,
    pub attempts: String,
    pub detail: String,
}

/// A job that named this job's key and was skipped.
#[derive(Debug)]
pub struct DuplicateRow {
    pub job_id: String,
    pub layer: String,
    pub at: String,
}

/// A job's page.
#[derive(Template)]
#[template(path = "console/job.html")]
pub struct JobPage {
    pub nav: Nav,
    pub job: JobRow,
    /// Label and value pairs of the job's fields.
    pub fields: Vec<(&'static str, String)>,
    pub message_id: String,
    pub history: Vec<HistoryRow>,
    pub duplicates: Vec<DuplicateRow>,
    pub dead_letter: Option<DeadLetterRow>,
    /// With `jobs:write`, while it can still be canceled.
    pub can_cancel: bool,
}

/// A dead-letter entry.
#[derive(Debug)]
pub struct DeadLetterRow {
    pub id: i64,
    pub job_id: String,
    pub tenant: String,
    pub key: String,
    pub to: String,
    pub subject: String,
    pub reason: String,
    pub error: String,
    pub smtp_reply: String,
    pub attempts: i32,
    pub failed_at: String,
}

/// One of the two tables of the dead letters.
#[derive(Debug)]
pub struct DeadLetterTable {
    pub reason: &'static str,
    pub rows: Vec<DeadLetterRow>,
    /// The query string of the next page, if there is one.
    pub next: Option<String>,
}

/// The dead letters.
#[derive(Template)]
#[template(path = "console/dead_letters.html")]
pub struct DeadLettersPage {
    pub nav: Nav,
    pub flash: Option<String>,
    pub reason: String,
    pub tenant: String,
    pub since: String,
    /// Whether the tenant filter applies (`tenants:all`).
    pub all_tenants: bool,
    pub can_act: bool,
    pub tables: Vec<DeadLetterTable>,
}

/// The confirmation a requeue of `uncertain` entries needs.
#[derive(Template)]
#[template(path = "console/confirm_requeue.html")]
pub struct ConfirmRequeuePage {
    pub nav: Nav,
    pub entries: Vec<DeadLetterRow>,
    pub uncertain: usize,
    pub phrase: String,
    pub reason: String,
    pub error: Option<String>,
}

/// A job waiting for its `send_at`.
#[derive(Debug)]
pub struct ScheduledRow {
    pub job_id: String,
    pub tenant: String,
    pub key: String,
    pub to: String,
    pub subject: String,
    pub send_at: String,
    pub due_in: String,
}

/// The scheduled jobs.
#[derive(Template)]
#[template(path = "console/scheduled.html")]
pub struct ScheduledPage {
    pub nav: Nav,
    pub flash: Option<String>,
    pub rows: Vec<ScheduledRow>,
    pub next: Option<String>,
    pub can_cancel: bool,
}

/// An entry of the suppression list.
#[derive(Debug)]
pub struct SuppressionRow {
    pub tenant: String,
    pub address: String,
    pub reason: String,
    pub detail: String,
    pub created_at: String,
}

/// The suppression list.
#[derive(Template)]
#[template(path = "console/suppressions.html")]
pub struct SuppressionsPage {
    pub nav: Nav,
    pub flash: Option<String>,
    pub rows: Vec<SuppressionRow>,
    pub next: Option<String>,
    pub can_write: bool,
    /// Whether the add form names a tenant (`tenants:all`).
    pub all_tenants: bool,
}

/// A webhook endpoint.
#[derive(Debug)]
pub struct WebhookRow {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub events: String,
    pub description: String,
    pub failing_since: Option<String>,
}

/// The webhook endpoints.
#[derive(Template)]
#[template(path = "console/webhooks.html")]
pub struct WebhooksPage {
    pub nav: Nav,
    pub rows: Vec<WebhookRow>,
    pub next: Option<String>,
}

/// A delivery of a webhook endpoint.
#[derive(Debug)]
pub struct DeliveryRow {
    pub id: i64,
    pub event: String,
    pub state: String,
    pub attempts: i32,
    pub last_attempt: String,
    pub last_status: String,
    pub last_error: String,
    pub next_attempt: String,
}

/// One endpoint and its delivery log.
#[derive(Template)]
#[template(path = "console/webhook.html")]
pub struct WebhookPage {
    pub nav: Nav,
    pub flash: Option<String>,
    pub endpoint: WebhookRow,
    pub deliveries: Vec<DeliveryRow>,
    pub next: Option<String>,
    pub can_write: bool,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn ages_are_coarse_and_say_which_way() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
        let ago = |secs: i64| age(&(now - chrono::Duration::seconds(secs)), &now);
        assert_eq!(ago(0), "0 s ago");
        assert_eq!(ago(59), "59 s ago");
        assert_eq!(ago(61), "1 min ago");
        assert_eq!(ago(3 * 3600 + 20 * 60 + 5), "3 h 20 min ago");
        assert_eq!(ago(2 * 86_400 + 4 * 3600), "2 d 4 h ago");
        assert_eq!(ago(-90), "1 min from now");
    }

    #[test]
    fn times_are_utc_to_the_second() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 5, 7).unwrap();
        assert_eq!(time(&at), "2026-12-03 09:05:07 UTC");
        assert_eq!(time_or_dash(None), "—");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = ErrorPage {
            status: 404,
            title: "Not Found",
            detail: "<script>alert(1)</script>".into(),
        };
        let html = page.render().expect("renders");
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
    }
}
