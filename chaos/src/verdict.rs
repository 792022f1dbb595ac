//! Reading back a run: waiting for every accepted job to end, then holding
//! the database against the SMTP server's own record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use sendonce_testkit::SmtpServer;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::plan::Plan;
use crate::{DRAIN_POLL, PostOutcome, Summary};

/// Terminal statuses of a job.
const TERMINAL: [&str; 4] = ["sent", "duplicate", "failed", "uncertain"];
/// Examples listed per kind of finding.
const EXAMPLES: usize = 5;

/// The status of every job the database knows (`duplicate` for skipped
/// ones), and the jobs found in both tables.
#[derive(Debug, Default)]
struct States {
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

async fn read_states(client: &Client) -> anyhow::Result<States> {
    let mut states = States::default();
    for row in client
        .query(
            "SELECT idempotency_key, job_id::text, state FROM deliveries",
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

/// Counts the outcomes and checks them against the SMTP server's record.
/// `lines` receives one line per kind of violation; the caller fills in
/// kills, restarts and duration.
pub async fn summarise(
    plan: &Plan,
    outcomes: &[PostOutcome],
    smtp: &SmtpServer,
    client: &Client,
    lines: &mut Vec<String>,
) -> anyhow::Result<Summary> {
    let mut findings = Findings::default();
    let states = read_states(client).await?;
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
                            plan.keys[other].key, plan.keys[key].key
                        ),
                    );
                }
            }
            PostOutcome::Refused(why) => {
                refused += 1;
                findings.add("post refused", format!("{}: {why}", plan.keys[key].key));
            }
        }
    }
    for job in &states.both {
        findings.add("job both owner and duplicate", job.clone());
    }

    let (mut sent, mut duplicate, mut failed, mut uncertain, mut lost) = (0, 0, 0, 0, 0);
    for (job, &key) in &jobs {
        match states.by_job.get(job).map(String::as_str) {
            Some("sent") => sent += 1,
            Some("duplicate") => duplicate += 1,
            Some("failed") => failed += 1,
            Some("uncertain") => uncertain += 1,
            other => {
                lost += 1;
                findings.add(
                    "job never terminal",
                    format!(
                        "{job} ({}) last {}",
                        plan.keys[key].key,
                        other.unwrap_or("unseen")
                    ),
                );
            }
        }
    }

    let accepted_keys: HashSet<usize> = jobs.values().copied().collect();
    let mut key_state: HashMap<usize, &str> = HashMap::new();
    for &n in &accepted_keys {
        let key = &plan.keys[n].key;
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
    let record = [(smtp.messages(), true), (smtp.cut_messages(), false)];
    for (mails, accepted) in &record {
        for mail in mails {
            let rcpt = mail.rcpt_to.first().map_or("", String::as_str);
            let Some(n) = plan.key_of_rcpt(rcpt) else {
                findings.add("message for an unknown recipient", rcpt.to_owned());
                continue;
            };
            let entry = transfers.entry(n).or_default();
            if *accepted {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let mut duplicate_effects = 0;
    let mut cut_keys = 0;
    for (&n, &(accepted, cut)) in &transfers {
        let key = &plan.keys[n].key;
        let state = key_state.get(&n).copied().unwrap_or("unknown");
        if accepted + cut > 1 {
            duplicate_effects += 1;
            findings.add(
                "key whose data reached the server twice",
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
                plan.keys[n].key.clone(),
            );
        }
    }

    lines.extend(findings.into_lines());
    Ok(Summary {
        posts: outcomes.len(),
        reused_posts: plan.reused_posts(),
        keys: accepted_keys.len(),
        new_jobs,
        replays,
        refused,
        kills: 0,
        redis_restarts: 0,
        sent,
        duplicate,
        failed,
        uncertain,
        cut_keys,
        duplicate_effects,
        lost,
        duration: Duration::ZERO,
        findings: Vec::new(),
        log_dir: None,
    })
}
