//! The key's state machine under random interleavings of two or three
//! holders of one job and the client's cancels, against real Postgres:
//! never two data phases that may both take effect, never a `sent`
//! overwritten, and never a job both `canceled` and (maybe) delivered.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sendonce_shared::domain::Task;
use sendonce_shared::store::{
    Cancel, Claim, DeadReason, Failure, Fence, Look, Retrying, Sending, Start, Store,
};
use sendonce_testkit::TestDatabase;

use crate::{LEASE, store_for, task};

const HOLDERS: usize = 3;

/// What one holder of the job does next, as a worker would.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The holder's next move in a worker's order: when idle, read the key
    /// (a pop, a redelivery, a reaped copy) and claim it the two-step way
    /// when the read says so (a cut attempt under a dead holder is filed
    /// `uncertain`); then start the data, with the one write that claims
    /// and starts it after a read, or the fenced `sending` after a claim;
    /// and when its data is out, the reply: `250` (recorded `sent`), 4xx
    /// (`retrying`), 5xx (`failed`) or none (`uncertain`).
    Next(Reply),
    /// A failure before the data (connect timeout, 4xx to RCPT), recorded
    /// `retrying` with whatever token it holds, however stale.
    FailBeforeData,
    /// Its lease lapses (a pause, a partition).
    Lapse,
    /// It renews its lease (resumed).
    Renew,
    /// The client cancels the job (`POST /jobs/{id}/cancel`).
    Cancel,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Ok,
    Transient,
    Permanent,
    None,
}

fn step() -> impl Strategy<Value = (usize, Step)> {
    let reply = prop_oneof![
        Just(Reply::Ok),
        Just(Reply::Transient),
        Just(Reply::Permanent),
        Just(Reply::None),
    ];
    let step = prop_oneof![
        6 => reply.prop_map(Step::Next),
        1 => Just(Step::FailBeforeData),
        2 => Just(Step::Lapse),
        2 => Just(Step::Renew),
        1 => Just(Step::Cancel),
    ];
    (0..HOLDERS, step)
}

/// A holder's view of its own attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// It read the key waiting under this token (nothing written yet).
    Looked(Fence),
    Claimed(Fence),
    /// Its data is out (it won `sending`) and it has no reply yet.
    DataOut(Fence),
}

/// Data phases that may have taken effect: in flight, accepted, or cut.
#[derive(Debug, Default)]
struct Effects {
    open: usize,
}

impl Effects {
    /// Holder `h` starts its data at step `i`: never for a canceled job,
    /// never while another data phase may take effect.
    fn start(&mut self, canceled: bool, i: usize, h: usize) -> Result<(), TestCaseError> {
        prop_assert!(
            !canceled,
            "step {}: holder {} starts the data of a canceled job",
            i,
            h
        );
        prop_assert_eq!(
            self.open,
            0,
            "step {}: holder {} starts the data while another data phase may take effect",
            i,
            h
        );
        self.open += 1;
        Ok(())
    }
}

async fn run(store: &Store, t: &Task, steps: &[(usize, Step)]) -> Result<(), TestCaseError> {
    let names: Vec<String> = (0..HOLDERS).map(|h| format!("{}-{h}", t.job_id)).collect();
    for name in &names {
        store.renew_lease(name, LEASE).await.expect("lease");
    }
    let mut phases = [Phase::Idle; HOLDERS];
    let mut effects = Effects::default();
    let mut was_sent = false;
    let mut canceled = false;
    let db = store.pool().get().await.expect("connection");
    for (i, &(h, step)) in steps.iter().enumerate() {
        let me = names[h].as_str();
        let failure = |reason, error| Failure {
            reason,
            error,
            smtp_reply: None,
        };
        match (step, phases[h]) {
            (Step::Next(_), Phase::Idle) => {
                let claim = match store.look(t, me).await.expect("look") {
                    Look::Ready { fence, .. } => {
                        phases[h] = Phase::Looked(fence);
                        None
                    }
                    Look::Mine { fence, .. } => {
                        store
                            .mark_retrying(t, fence, retrying("start failed", true))
                            .await
                            .expect("retrying");
                        None
                    }
                    Look::ClaimNow => Some(store.claim(t, me).await.expect("claim")),
                    Look::Settled(claim) => Some(claim),
                };
                match claim {
                    Some(Claim::Proceed { fence, .. }) => phases[h] = Phase::Claimed(fence),
                    Some(Claim::Ambiguous { fence, .. }) => {
                        store
                            .dead_letter(t, fence, failure(DeadReason::Uncertain, "cut"))
                            .await
                            .expect("dead letter");
                    }
                    Some(Claim::Duplicate { .. }) => {
                        prop_assert!(false, "one job cannot duplicate itself")
                    }
                    Some(Claim::AlreadyDone | Claim::Held) | None => {}
                }
            }
            (Step::Next(_), Phase::Looked(looked)) => {
                match store
                    .claim_sending(t, looked, me, &[])
                    .await
                    .expect("claim and start")
                {
                    Start::Go { fence, .. } => {
                        effects.start(canceled, i, h)?;
                        phases[h] = Phase::DataOut(fence);
                    }
                    Start::Lost | Start::Suppressed => phases[h] = Phase::Idle,
                }
            }
            (Step::FailBeforeData, Phase::Looked(_)) => {
                // The worker claims the key to record the failure.
                if let Claim::Proceed { fence, .. } = store.claim(t, me).await.expect("claim") {
                    store
                        .mark_retrying(t, fence, retrying("421 relay busy", false))
                        .await
                        .expect("retrying");
                }
                phases[h] = Phase::Idle;
            }
            (Step::Next(_), Phase::Claimed(fence)) => {
                if store
                    .mark_sending(t, fence, me, &[])
                    .await
                    .expect("sending")
                    == Sending::Go
                {
                    effects.start(canceled, i, h)?;
                    phases[h] = Phase::DataOut(fence);
                } else {
                    phases[h] = Phase::Idle;
                }
            }
            (Step::Next(reply), Phase::DataOut(fence)) => {
                match reply {
                    // The data took effect, or may have: it stays counted.
                    Reply::Ok => store.mark_sent(t, "250 ok", &[]).await.expect("sent"),
                    Reply::None => {
                        store
                            .dead_letter(t, fence, failure(DeadReason::Uncertain, "cut"))
                            .await
                            .expect("dead letter");
                    }
                    Reply::Transient => {
                        effects.open -= 1;
                        store
                            .mark_retrying(t, fence, retrying("451", true))
                            .await
                            .expect("retrying");
                    }
                    Reply::Permanent => {
                        effects.open -= 1;
                        store
                            .dead_letter(t, fence, failure(DeadReason::Failed, "550"))
                            .await
                            .expect("dead letter");
                    }
                }
                phases[h] = Phase::Idle;
            }
            (Step::FailBeforeData, Phase::Claimed(fence)) => {
                store
                    .mark_retrying(t, fence, retrying("421 relay busy", false))
                    .await
                    .expect("retrying");
                phases[h] = Phase::Idle;
            }
            (Step::Cancel, _) => {
                let done = store.cancel(t.job_id, None).await.expect("cancel") == Cancel::Canceled;
                prop_assert!(
                    !done || effects.open == 0,
                    "step {}: canceled while a data phase may have taken effect",
                    i
                );
                canceled |= done;
            }
            (Step::Lapse, _) => store.release_lease(me).await.expect("lapse"),
            (Step::Renew, _) => store.renew_lease(me, LEASE).await.expect("renew"),
            _ => {}
        }
        let state: String = db
            .query_one(
                "SELECT state FROM deliveries WHERE idempotency_key = $1",
                &[&t.idempotency_key.as_str()],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        if was_sent {
            prop_assert_eq!(&state, "sent", "step {}: a `sent` was overwritten", i);
        }
        if canceled {
            prop_assert_eq!(&state, "canceled", "step {}: a cancel was undone", i);
        }
        was_sent = state == "sent";
    }
    Ok(())
}

#[test]
fn random_interleavings_of_three_holders_never_open_two_data_phases_nor_overwrite_sent() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDatabase::create());
    let store = store_for(&db);
    runtime.block_on(store.migrate()).expect("migrate");
    let mut runner = TestRunner::new(Config {
        cases: 150,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..40), |steps| {
        let t = task(&format!("machine:{}", uuid::Uuid::now_v7()));
        runtime.block_on(run(&store, &t, &steps))
    });
    drop(store);
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn retrying(error: &str, counted: bool) -> Retrying<'_> {
    Retrying {
        error,
        smtp_reply: None,
        delay: Duration::ZERO,
        counted,
    }
}
