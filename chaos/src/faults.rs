//! The faults a run injects: first drawn up as a [`Schedule`] of timed
//! actions (so what a scenario asks for can be checked without running
//! it), then carried out by [`inject`] against the run's processes.
//!
//! Pauses are SIGSTOP and SIGCONT of real processes: a worker (for 0.5 to 3
//! leases by default, so its lease often runs out while it is stopped), the
//! SMTP server (`sendonce-smtp-sink`, a process of its own for this), and
//! every process of the run's private Postgres cluster.
//!
//! Between actions [`inject`] acts as the workers' supervisor: a worker
//! that exited on its own is started again. A worker still starting when
//! Redis dies exits at once (it checks Redis before its first pop, and
//! fails fast), as it would under systemd or Kubernetes, which restart it.
//! A worker that exits after it started, though, crashed: that is reported.

use std::time::Duration;

use sendonce_testkit::{PostgresServer, RedisServer};
use tokio::time::Instant;

use crate::cluster::{self, Environment, Process, SmtpSink};
use crate::{Scenario, WORKER_LEASE};

/// How often the supervisor looks for workers that exited on their own.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// What a worker logs once it is up (`runner`, INFO), before its first pop.
const STARTED_LINE: &str = r#""message":"worker started""#;

/// One thing done to the run's processes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// SIGKILL the worker in `slot` and start a new one in its place.
    Kill { slot: usize },
    /// SIGSTOP the worker in `slot`; `pause` pairs it with its resume.
    PauseWorker { slot: usize, pause: usize },
    /// SIGCONT the worker in `slot`, if `pause` still holds it (a kill
    /// meanwhile replaced it by a running one).
    ResumeWorker { slot: usize, pause: usize },
    /// SIGSTOP the SMTP server.
    PauseSmtp,
    /// SIGCONT the SMTP server.
    ResumeSmtp,
    /// SIGSTOP every Postgres process.
    PausePostgres,
    /// SIGCONT every Postgres process.
    ResumePostgres,
    /// SIGKILL Redis and the worker in `slot`, restart Redis from its AOF
    /// and, the moment it answers, start a fresh worker in the slot, as a
    /// supervisor would after a host-level crash. The fresh worker reaps at
    /// start-up while the heartbeats of the others come back from the AOF.
    RestartRedis { slot: usize },
    /// `FLUSHALL`: Redis loses every key (queue, processing lists, delayed
    /// set, leases, L1) while everything keeps running.
    FlushRedis,
    /// SIGKILL Redis and restart it with its AOF deleted: a restart without
    /// persistence, or a failover to an empty replica.
    WipeRedis,
}

/// Every action of a run, by offset from the start of the chaos.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Sorted by offset; actions at the same offset keep their order.
    pub actions: Vec<(Duration, Action)>,
}

impl Schedule {
    /// Draws the actions `scenario` asks for: kills and worker pauses at
    /// random intervals around their means, one SMTP and one Postgres pause
    /// at random moments, the Redis restart at the middle. Every pause ends
    /// within the chaos.
    pub fn new(scenario: &Scenario) -> Self {
        let end = scenario.chaos;
        let workers = scenario.workers.max(1);
        let mut actions = Vec::new();
        for at in spread(scenario.kill_every, end) {
            let slot = rand::random_range(0..workers);
            actions.push((at, Action::Kill { slot }));
        }
        let pauses = &scenario.pauses;
        if !pauses.worker_leases.is_empty() {
            // Each pause takes a worker not paused already, so that every
            // pause drawn happens.
            let mut paused_until = vec![Duration::ZERO; workers];
            for (pause, at) in spread(pauses.worker_every, end).into_iter().enumerate() {
                let length = WORKER_LEASE.mul_f64(rand::random_range(pauses.worker_leases.clone()));
                let free: Vec<usize> = (0..workers).filter(|&s| paused_until[s] <= at).collect();
                if at + length <= end && !free.is_empty() {
                    let slot = free[rand::random_range(0..free.len())];
                    paused_until[slot] = at + length;
                    actions.push((at, Action::PauseWorker { slot, pause }));
                    actions.push((at + length, Action::ResumeWorker { slot, pause }));
                }
            }
        }
        for (length, pause, resume) in [
            (pauses.smtp, Action::PauseSmtp, Action::ResumeSmtp),
            (
                pauses.postgres,
                Action::PausePostgres,
                Action::ResumePostgres,
            ),
        ] {
            if !length.is_zero() && length < end {
                let at = (end - length).mul_f64(rand::random_range(0.1..0.9));
                actions.push((at, pause));
                actions.push((at + length, resume));
            }
        }
        let slot = rand::random_range(0..workers);
        actions.push((end / 2, Action::RestartRedis { slot }));
        actions.push((end / 4, Action::FlushRedis));
        actions.push((end * 3 / 4, Action::WipeRedis));
        actions.sort_by_key(|&(at, _)| at);
        Self { actions }
    }
}

/// Offsets before `end`, each 0.5 to 1.5 times `mean` after the one
/// before; none when `mean` is zero.
fn spread(mean: Duration, end: Duration) -> Vec<Duration> {
    let mut offsets = Vec::new();
    if mean.is_zero() {
        return offsets;
    }
    let mut at = mean.mul_f64(rand::random_range(0.5..1.5));
    while at < end {
        offsets.push(at);
        at += mean.mul_f64(rand::random_range(0.5..1.5));
    }
    offsets
}

/// What [`inject`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injected {
    /// Workers SIGKILLed (the one killed with Redis included).
    pub kills: usize,
    /// Workers SIGSTOPped and resumed.
    pub worker_pauses: usize,
    /// SMTP server pauses.
    pub smtp_pauses: usize,
    /// Postgres pauses.
    pub postgres_pauses: usize,
    /// Redis SIGKILLs and restarts.
    pub redis_restarts: usize,
    /// Times Redis lost everything (a `FLUSHALL`, a restart without its AOF).
    pub redis_losses: usize,
    /// Workers that exited on their own and were started again.
    pub worker_exits: usize,
    /// Those of them that had logged that they were up: crashes, each
    /// named by its log file.
    pub crashed: Vec<String>,
}

/// The processes the faults act on.
#[derive(Debug)]
pub struct Targets<'a> {
    /// Where new workers start.
    pub env: &'a Environment,
    /// One worker per slot.
    pub workers: &'a mut [Process],
    /// The run's Redis.
    pub redis: &'a mut RedisServer,
    /// The run's Postgres cluster.
    pub postgres: &'a mut PostgresServer,
    /// The run's SMTP server.
    pub smtp: &'a SmtpSink,
}

/// Carries out `schedule` from `started` on, supervising the workers
/// until the end of the chaos; returns what it did. Every paused process
/// runs again when it returns.
pub async fn inject(
    schedule: &Schedule,
    started: Instant,
    chaos: Duration,
    targets: Targets<'_>,
) -> anyhow::Result<Injected> {
    let Targets {
        env,
        workers,
        redis,
        postgres,
        smtp,
    } = targets;
    let mut done = Injected::default();
    // The pause holding each slot's worker, if one does.
    let mut paused: Vec<Option<usize>> = vec![None; workers.len()];
    let mut starts = 0;
    let mut restart = |workers: &mut [Process], slot: usize| -> anyhow::Result<()> {
        starts += 1;
        workers[slot] = cluster::start_worker(env, format!("worker{slot}-{starts}"))?;
        Ok(())
    };
    let end = started + chaos;
    let mut actions = schedule.actions.iter().peekable();
    loop {
        let next = actions.peek().map_or(end, |&&(at, _)| started + at);
        tokio::time::sleep_until(next.min(Instant::now() + SUPERVISE_EVERY)).await;
        for slot in 0..workers.len() {
            // A stopped worker cannot exit; one that did is not paused.
            if paused[slot].is_none() && workers[slot].exited()?.is_some() {
                done.worker_exits += 1;
                let log = env.log_dir.join(format!("{}.log", workers[slot].name()));
                let log = std::fs::read(&log).unwrap_or_default();
                if String::from_utf8_lossy(&log).contains(STARTED_LINE) {
                    done.crashed.push(workers[slot].name().to_owned());
                }
                restart(workers, slot)?;
            }
        }
        if Instant::now() < next {
            continue;
        }
        let Some(&(_, action)) = actions.next() else {
            return Ok(done);
        };
        match action {
            Action::Kill { slot } if slot < workers.len() => {
                workers[slot].kill();
                paused[slot] = None;
                done.kills += 1;
                restart(workers, slot)?;
            }
            Action::PauseWorker { slot, pause } if slot < workers.len() => {
                if paused[slot].is_none() {
                    workers[slot].pause();
                    paused[slot] = Some(pause);
                    done.worker_pauses += 1;
                }
            }
            Action::ResumeWorker { slot, pause } if slot < workers.len() => {
                if paused[slot] == Some(pause) {
                    workers[slot].resume();
                    paused[slot] = None;
                }
            }
            Action::PauseSmtp => {
                smtp.pause();
                done.smtp_pauses += 1;
            }
            Action::ResumeSmtp => smtp.resume(),
            Action::PausePostgres => {
                postgres.pause();
                done.postgres_pauses += 1;
            }
            Action::ResumePostgres => postgres.resume(),
            Action::RestartRedis { slot } => {
                redis.stop();
                if let Some(worker) = workers.get_mut(slot) {
                    worker.kill();
                    paused[slot] = None;
                    done.kills += 1;
                }
                redis.restart().await;
                done.redis_restarts += 1;
                if slot < workers.len() {
                    restart(workers, slot)?;
                }
            }
            Action::FlushRedis => {
                redis.flushall().await;
                done.redis_losses += 1;
            }
            Action::WipeRedis => {
                redis.restart_empty().await;
                done.redis_losses += 1;
            }
            Action::Kill { .. } | Action::PauseWorker { .. } | Action::ResumeWorker { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::Pauses;

    fn scenario(chaos: Duration) -> Scenario {
        Scenario {
            posts: 10,
            reuse_percent: 0,
            workers: 4,
            chaos,
            kill_every: Duration::from_secs(2),
            pauses: Pauses::default(),
            drain_timeout: Duration::from_secs(1),
            queue_shards: 1,
            bin_dir: PathBuf::new(),
        }
    }

    #[test]
    fn the_small_run_pauses_workers_smtp_and_postgres_and_resumes_them_in_time() {
        let scenario = scenario(Duration::from_secs(15));

        let schedule = Schedule::new(&scenario);

        let actions = &schedule.actions;
        assert!(actions.is_sorted_by_key(|&(at, _)| at));
        assert!(actions.iter().all(|&(at, _)| at <= scenario.chaos));
        let count = |wanted: fn(&Action) -> bool| actions.iter().filter(|(_, a)| wanted(a)).count();
        assert!(count(|a| matches!(a, Action::PauseWorker { .. })) >= 2);
        assert_eq!(count(|a| matches!(a, Action::PauseSmtp)), 1);
        assert_eq!(count(|a| matches!(a, Action::PausePostgres)), 1);
        assert_eq!(count(|a| matches!(a, Action::RestartRedis { .. })), 1);
        assert_eq!(
            count(|a| matches!(a, Action::FlushRedis | Action::WipeRedis)),
            2
        );
        for &(at, action) in actions {
            let resumed =
                |wanted: Action| actions.iter().find(|&&(_, a)| a == wanted).map(|&(t, _)| t);
            let resume = match action {
                Action::PauseWorker { slot, pause } => Action::ResumeWorker { slot, pause },
                Action::PauseSmtp => Action::ResumeSmtp,
                Action::PausePostgres => Action::ResumePostgres,
                _ => continue,
            };
            let length = resumed(resume).expect("every pause is resumed") - at;
            if let Action::PauseWorker { .. } = action {
                assert!(
                    length >= WORKER_LEASE / 2 && length <= WORKER_LEASE * 3,
                    "{length:?}"
                );
            }
        }
    }

    #[test]
    fn a_worker_is_never_paused_twice_at_once() {
        let mut scenario = scenario(Duration::from_secs(60));
        scenario.workers = 2;
        scenario.pauses.worker_every = Duration::from_millis(500);

        let schedule = Schedule::new(&scenario);

        let mut paused = [false; 2];
        for &(_, action) in &schedule.actions {
            match action {
                Action::PauseWorker { slot, .. } => {
                    assert!(!paused[slot], "slot {slot} paused twice");
                    paused[slot] = true;
                }
                Action::ResumeWorker { slot, .. } => paused[slot] = false,
                _ => {}
            }
        }
    }

    #[test]
    fn zero_means_no_pauses() {
        let mut scenario = scenario(Duration::from_secs(15));
        scenario.pauses = Pauses {
            worker_every: Duration::ZERO,
            smtp: Duration::ZERO,
            postgres: Duration::ZERO,
            ..Pauses::default()
        };

        let schedule = Schedule::new(&scenario);

        assert!(schedule.actions.iter().all(|(_, action)| matches!(
            action,
            Action::Kill { .. }
                | Action::RestartRedis { .. }
                | Action::FlushRedis
                | Action::WipeRedis
        )));
    }
}
