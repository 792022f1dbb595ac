//! Reading back a run: waiting for every accepted job to end, then holding
//! the database against the SMTP server's own record and the workers' logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use crate::cluster::Transfer;
use crate::plan::Plan;
use crate::{CancelOutcome, DRAIN_POLL, PostOutcome, Summary};

/// Terminal statuses of a job.
const TERMINAL: [&str; 5] = ["sent", "duplicate", "failed", "uncertain", "canceled"];
/// Examples listed per kind of finding.
const EXAMPLES: usize = 5;

/// The status of every job the database knows (`duplicate` for skipped
/// ones), and the jobs found in both tables.
#[derive(Debug, Default)]
pub struct States {
    by_job: HashMap<String, String>,
    /// Owner job of each key: `(job, state)`.
    owners: HashMap<String, (String, String)>,
    both: Vec<String>,
}

/// Polls the database until every accepted job is terminal, or `timeout`
/// passes.
pub async fn drain(
    client: &Client,
    accepted: &HashMap<String, usize>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let states = read_states(client).await?;
        let done = accepted.keys().all(|job| {
            states
                .by_job
                .get(job)
                .is_some_and(|state| TERMINAL.contains(&state.as_str()))
        });
        if done || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Reads every job's status.
pub async fn read_states(client: &Client) -> anyhow::Result<States> {
    let mut states = States::default();
    for row in client
        .query(
            "SELECT tenant || '/' || idempotency_key, job_id::text, state FROM deliveries",
            &[],
        )
        .await?
    {
        let (key, job, state): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        states.by_job.insert(job.clone(), state.clone());
        states.owners.insert(key, (job, state));
    }
    for row in client
        .query("SELECT job_id::text FROM duplicate_jobs", &[])
        .await?
    {
        let job: String = row.get(0);
        if states
            .by_job
            .insert(job.clone(), "duplicate".into())
            .is_some()
        {
            states.both.push(job);
        }
    }
    Ok(states)
}

/// The keys (`tenant/key`) sent before their `send_at`.
pub async fn sent_early(client: &Client) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT tenant || '/' || idempotency_key FROM deliveries
             WHERE state = 'sent' AND sent_at < (task ->> 'send_at')::timestamptz",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Findings grouped by kind, each with a few examples.
#[derive(Debug, Default)]
struct Findings(BTreeMap<&'static str, Vec<String>>);

impl Findings {
    fn add(&mut self, kind: &'static str, example: String) {
        self.0.entry(kind).or_default().push(example);
    }

    fn into_lines(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(kind, examples)| {
                let shown: Vec<_> = examples.iter().take(EXAMPLES).cloned().collect();
                format!("{kind}: {} (e.g. {})", examples.len(), shown.join("; "))
            })
            .collect()
    }
}

/// What a run is judged on, besides what the API answered.
#[derive(Debug, Default)]
pub struct Evidence {
    /// The SMTP server's own record.
    pub transfers: Vec<Transfer>,
    /// The jobs the workers logged as sent, with their idempotency keys
    /// (see `logs`).
    pub sent_jobs: HashMap<String, String>,
    /// The database, once drained.
    pub states: States,
    /// Scheduled keys sent before their `send_at` (see [`sent_early`]).
    pub sent_early: Vec<String>,
}

/// Counts the outcomes and checks them against the evidence. `lines`
/// receives one line per kind of violation; the caller fills in the faults
/// and the duration.
pub fn summarise(
    plan: &Plan,
    outcomes: &[PostOutcome],
    cancels: &[CancelOutcome],
    evidence: &Evidence,
    lines: &mut Vec<String>,
) -> Summary {
    let mut findings = Findings::default();
    let states = &evidence.states;
    let (mut new_jobs, mut replays, mut refused) = (0, 0, 0);
    let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
    for (outcome, &key) in outcomes.iter().zip(&plan.posts) {
        match outcome {
            PostOutcome::Accepted { status, job_id } => {
                if *status == 202 {
                    new_jobs += 1;
                } else {
                    replays += 1;
                }
                if let Some(other) = jobs.insert(job_id.clone(), key)
                    && other != key
                {
                    findings.add(
                        "one job id answered for two keys",
                        format!(
                            "{job_id}: {} and {}",
                            plan.keys[other].scoped(),
                            plan.keys[key].scoped()
                        ),
                    );
                }
            }
            PostOutcome::Refused(why) => {
                refused += 1;
                findings.add(
                    "post refused",
                    format!("{}: {why}", plan.keys[key].scoped()),
                );
            }
        }
    }
    for job in &states.both {
        findings.add("job both owner and duplicate", job.clone());
    }

    let (mut sent, mut duplicate, mut failed, mut uncertain, mut stranded) = (0, 0, 0, 0, 0);
    let mut canceled = 0;
    for (job, &key) in &jobs {
        match states.by_job.get(job).map(String::as_str) {
            Some("sent") => sent += 1,
            Some("canceled") => canceled += 1,
            Some("duplicate") => duplicate += 1,
            Some("failed") => failed += 1,
            Some("uncertain") => uncertain += 1,
            other => {
                stranded += 1;
                findings.add(
                    "job stranded (never terminal)",
                    format!(
                        "{job} ({}) last {}",
                        plan.keys[key].scoped(),
                        other.unwrap_or("unseen")
                    ),
                );
            }
        }
    }

    let accepted_keys: HashSet<usize> = jobs.values().copied().collect();
    let mut key_state: HashMap<usize, &str> = HashMap::new();
    for &n in &accepted_keys {
        let key = &plan.keys[n].scoped();
        match states.owners.get(key) {
            None => findings.add("key without an owner job", key.clone()),
            Some((job, state)) => {
                if jobs.get(job) != Some(&n) {
                    findings.add("key owned by a job never answered", format!("{key}: {job}"));
                }
                key_state.insert(n, state.as_str());
            }
        }
    }

    let mut transfers: HashMap<usize, (usize, usize)> = HashMap::new();
    for transfer in &evidence.transfers {
        let Some(n) = plan.key_of_rcpt(&transfer.rcpt) else {
            findings.add("message for an unknown recipient", transfer.rcpt.clone());
            continue;
        };
        let entry = transfers.entry(n).or_default();
        if transfer.accepted {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        if let Some(cc) = &plan.keys[n].cc
            && !transfer.rcpt_to.contains(cc)
        {
            findings.add(
                "message without its cc recipient",
                format!("{}: {:?}", plan.keys[n].scoped(), transfer.rcpt_to),
            );
        }
    }
    let mut duplicate_effects = 0;
    let mut cut_keys = 0;
    for (&n, &(accepted, cut)) in &transfers {
        let key = &plan.keys[n].scoped();
        let state = key_state.get(&n).copied().unwrap_or("unknown");
        if accepted + cut > 1 {
            duplicate_effects += 1;
            findings.add(
                "key whose data reached the server twice",
                format!("{key}: {accepted} accepted, {cut} cut"),
            );
        }
        if state == "canceled" {
            findings.add(
                "canceled key whose data reached the server",
                format!("{key}: {accepted} accepted, {cut} cut"),
            );
        }
        if cut > 0 {
            cut_keys += 1;
            if state != "uncertain" {
                findings.add("cut key not uncertain", format!("{key}: {state}"));
            }
        }
        if accepted > 0 && !matches!(state, "sent" | "uncertain") {
            findings.add(
                "accepted key reported neither sent nor uncertain",
                format!("{key}: {state}"),
            );
        }
    }
    for (&n, &state) in &key_state {
        if state == "sent" && transfers.get(&n).is_none_or(|&(accepted, _)| accepted == 0) {
            findings.add(
                "key sent without a message at the server",
                plan.keys[n].scoped(),
            );
        }
    }

    // Cancels: a 200 means canceled and never delivered (checked above),
    // a 409 means the job went on; nothing is canceled without a 200.
    let (mut cancels_taken, mut cancels_late) = (0, 0);
    let mut canceled_by_client = HashSet::new();
    for cancel in cancels {
        let key = plan.keys[cancel.key].scoped();
        let state = key_state.get(&cancel.key).copied().unwrap_or("unknown");
        match cancel.status {
            200 => {
                cancels_taken += 1;
                canceled_by_client.insert(cancel.key);
                if state != "canceled" {
                    findings.add(
                        "cancel answered 200 but the key ended otherwise",
                        format!("{key} ({}): {state}", cancel.job_id),
                    );
                }
            }
            409 => {
                cancels_late += 1;
                if state == "canceled" {
                    findings.add("cancel answered 409 but the key is canceled", key);
                }
            }
            other => findings.add(
                "cancel of an accepted job not answered 200 or 409",
                format!("{key} ({}): {other}", cancel.job_id),
            ),
        }
    }
    for (&n, &state) in &key_state {
        if state == "canceled" && !canceled_by_client.contains(&n) {
            findings.add(
                "key canceled without a cancel answered 200",
                plan.keys[n].scoped(),
            );
        }
    }
    for key in &evidence.sent_early {
        findings.add("scheduled key sent before its send_at", key.clone());
    }
    let scheduled = accepted_keys
        .iter()
        .filter(|&&n| plan.keys[n].send_in.is_some())
        .count();
    let with_attachment = accepted_keys
        .iter()
        .filter(|&&n| plan.keys[n].attachment)
        .count();

    let (logged_sent, false_uncertain) =
        false_uncertain(plan, &evidence.sent_jobs, &jobs, &key_state, &mut findings);

    lines.extend(findings.into_lines());
    Summary {
        posts: outcomes.len(),
        reused_posts: plan.reused_posts(),
        keys: accepted_keys.len(),
        new_jobs,
        replays,
        refused,
        sent,
        duplicate,
        failed,
        uncertain,
        cut_keys,
        duplicate_effects,
        stranded,
        logged_sent,
        false_uncertain,
        canceled,
        cancels_taken,
        cancels_late,
        scheduled,
        with_attachment,
        ..Summary::default()
    }
}

/// Counts the keys whose `250` a worker read and recorded (a job of theirs
/// is in `sent_jobs`), and those of them whose row ended other than `sent`.
/// A `250` that a worker read is the truth, whoever owns the row.
fn false_uncertain(
    plan: &Plan,
    sent_jobs: &HashMap<String, String>,
    jobs: &BTreeMap<String, usize>,
    key_state: &HashMap<usize, &str>,
    findings: &mut Findings,
) -> (usize, usize) {
    let mut keys: BTreeMap<usize, &str> = BTreeMap::new();
    for (job, key) in sent_jobs {
        // A job no post was answered with (its answer was lost, and the
        // retry made another job) is reported as such elsewhere; its key
        // still counts here, by the key its log line names.
        match jobs.get(job).copied().or_else(|| plan.key_of(key)) {
            Some(n) => {
                keys.entry(n).or_insert(job);
            }
            None => findings.add(
                "job logged sent for an unknown key",
                format!("{job}: {key}"),
            ),
        }
    }
    let logged = keys.len();
    let mut count = 0;
    for (n, job) in keys {
        let state = key_state.get(&n).copied().unwrap_or("unknown");
        if state != "sent" {
            count += 1;
            findings.add(
                "key whose 250 a worker recorded ended other than sent",
                format!("{} (job {job}): {state}", plan.keys[n].scoped()),
            );
        }
    }
    (logged, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Key;

    const JOB_A: &str = "0193a1b2-0000-7000-8000-00000000000a";
    const JOB_B: &str = "0193a1b2-0000-7000-8000-00000000000b";

    /// Two keys, each posted once and accepted, each sent by a worker that
    /// logged it; the database says `a_state` for the first key.
    fn run_where_the_first_key_ends(a_state: &str) -> (Summary, Vec<String>) {
        run_with(a_state, &[], true)
    }

    /// As [`run_where_the_first_key_ends`], with `cancels` asked for, and
    /// the first key's message at the server only when `delivered`.
    fn run_with(
        a_state: &str,
        cancels: &[CancelOutcome],
        delivered: bool,
    ) -> (Summary, Vec<String>) {
        let plan = Plan {
            keys: (0..2)
                .map(|n| Key {
                    tenant: "chaos0".into(),
                    key: format!("chaos:{n}"),
                    rcpt: format!("user{n}@chaos.test"),
                    fault: None,
                    cc: None,
                    send_in: None,
                    cancel: false,
                    attachment: false,
                    priority: "normal",
                })
                .collect(),
            posts: vec![0, 1],
        };
        let outcomes = [JOB_A, JOB_B].map(|job| PostOutcome::Accepted {
            status: 202,
            job_id: job.to_owned(),
        });
        let mut states = States::default();
        for (n, (job, state)) in [(JOB_A, a_state), (JOB_B, "sent")].into_iter().enumerate() {
            states.by_job.insert(job.to_owned(), state.to_owned());
            states.owners.insert(
                format!("chaos0/chaos:{n}"),
                (job.to_owned(), state.to_owned()),
            );
        }
        let evidence = Evidence {
            transfers: (0..2)
                .filter(|&n| delivered || n > 0)
                .map(|n| Transfer {
                    rcpt: format!("user{n}@chaos.test"),
                    rcpt_to: vec![format!("user{n}@chaos.test")],
                    accepted: true,
                })
                .collect(),
            sent_jobs: HashMap::from_iter(
                [
                    (JOB_A.to_owned(), "chaos0/chaos:0".to_owned()),
                    (JOB_B.to_owned(), "chaos0/chaos:1".to_owned()),
                ]
                .into_iter()
                .filter(|(job, _)| delivered || job != JOB_A),
            ),
            states,
            sent_early: Vec::new(),
        };
        let mut findings = Vec::new();
        let mut summary = summarise(&plan, &outcomes, cancels, &evidence, &mut findings);
        summary.findings = findings;
        let violations = summary.check();
        (summary, violations)
    }

    #[test]
    fn a_run_where_every_logged_send_ended_sent_passes() {
        let (summary, violations) = run_where_the_first_key_ends("sent");

        assert_eq!(violations, Vec::<String>::new(), "{summary}");
        assert_eq!(
            (summary.sent, summary.logged_sent, summary.false_uncertain),
            (2, 2, 0)
        );
    }

    #[test]
    fn a_logged_send_whose_row_ended_uncertain_is_a_false_uncertain() {
        let (summary, violations) = run_where_the_first_key_ends("uncertain");

        assert_eq!(summary.false_uncertain, 1, "{summary}");
        assert!(
            summary.to_string().contains("false_uncertain=1"),
            "{summary}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.contains("chaos:0") && v.contains("ended other than sent")),
            "{violations:?}"
        );
    }

    #[test]
    fn sends_without_a_single_sent_log_line_fail_the_run() {
        let (mut summary, _) = run_where_the_first_key_ends("sent");
        summary.logged_sent = 0;

        let violations = summary.check();

        assert!(
            violations.iter().any(|v| v.contains("no worker logged")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_job_left_processing_is_stranded() {
        let (summary, violations) = run_where_the_first_key_ends("processing");

        assert_eq!(summary.stranded, 1, "{summary}");
        assert!(summary.to_string().contains("stranded=1"), "{summary}");
        assert!(
            violations.iter().any(|v| v.contains("stranded")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_cancel_that_won_passes_and_one_whose_key_was_delivered_fails() {
        let taken = [CancelOutcome {
            key: 0,
            job_id: JOB_A.to_owned(),
            status: 200,
        }];
        let (summary, violations) = run_with("canceled", &taken, false);
        assert_eq!(violations, Vec::<String>::new(), "{summary}");
        assert_eq!((summary.canceled, summary.cancels_taken), (1, 1));

        let (_, violations) = run_with("canceled", &taken, true);
        assert!(
            violations
                .iter()
                .any(|v| v.contains("canceled key whose data reached")),
            "{violations:?}"
        );
        let (_, violations) = run_with("sent", &taken, true);
        assert!(
            violations.iter().any(|v| v.contains("cancel answered 200")),
            "{violations:?}"
        );
        let (_, violations) = run_with("canceled", &[], false);
        assert!(
            violations
                .iter()
                .any(|v| v.contains("without a cancel answered 200")),
            "{violations:?}"
        );
    }
}
