//! What a run posts: the keys, the fault each key's recipient asks for, and
//! which posts reuse a key posted before.

use std::time::Duration;

use base64::Engine as _;
use sendonce_testkit::Fault;
use serde_json::{Value, json};

/// Domain of every recipient; the SMTP server's record is mapped back to
/// keys through the local part.
const DOMAIN: &str = "chaos.test";

/// The tenants posting: consecutive keys of the plan are one idempotency
/// key in each tenant, so the same key string is posted by all of them and
/// must be a job (and an email) in each.
pub const TENANTS: usize = 3;

/// The priorities posted, in turn.
pub const PRIORITIES: [&str; 3] = ["high", "normal", "low"];

/// One idempotency key and the message posted under it (the same body on
/// every post, so a repost is a replay, not a conflict).
#[derive(Debug, Clone)]
pub struct Key {
    /// The tenant posting it (`chaos0` .. `chaos2`).
    pub tenant: String,
    /// The idempotency key, shared with the same key of the other tenants.
    pub key: String,
    /// Its recipient, unique to the key: `user<n>[+fault]@chaos.test`.
    pub rcpt: String,
    /// The fault the recipient asks the SMTP server for.
    pub fault: Option<Fault>,
    /// A `cc` recipient (`user<n>+cc@chaos.test`; only keys without a
    /// fault, so the message goes to both or neither).
    pub cc: Option<String>,
    /// A scheduled send: `send_at` this long after the key's first post
    /// (the same time on every post of the key, so reposts are replays).
    pub send_in: Option<Duration>,
    /// Whether the client cancels the job soon after its first post.
    pub cancel: bool,
    /// Whether the message carries a small binary attachment.
    pub attachment: bool,
    /// Its `priority`: the plan's keys take `high`, `normal` and `low` in
    /// turn (by key, across tenants), so every run posts all three.
    pub priority: &'static str,
}

impl Key {
    /// The key with its tenant, `tenant/key`, as the run's evidence names
    /// it (see [`Plan::key_of`]).
    pub fn scoped(&self) -> String {
        format!("{}/{}", self.tenant, self.key)
    }

    /// The index of its tenant.
    pub fn tenant_index(&self) -> usize {
        self.tenant
            .strip_prefix("chaos")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0)
    }

    /// The `POST /addJob` body, with `send_at` when the key is scheduled.
    pub fn body(&self, send_at: Option<&str>) -> Value {
        let mut body = json!({
            "to": self.rcpt,
            "subject": format!("chaos {}", self.key),
            "text": "Sent by the sendonce chaos test.",
            "idempotency_key": self.key,
            "priority": self.priority,
        });
        if let Some(cc) = &self.cc {
            body["cc"] = json!([cc]);
        }
        if let Some(at) = send_at {
            body["send_at"] = json!(at);
        }
        if self.attachment {
            // 48 bytes of every value mod 256 from the key's length on:
            // binary, and the same on every post of the key.
            let bytes: Vec<u8> = (0..48u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(self.key.len() as u8))
                .collect();
            body["attachments"] = json!([{
                "filename": format!("{}.bin", self.key.replace(':', "-")),
                "content_type": "application/octet-stream",
                "content": base64::engine::general_purpose::STANDARD.encode(bytes),
            }]);
        }
        body
    }
}

/// Every key, and the posts in order as indexes into the keys.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The keys, in the order of their first post.
    pub keys: Vec<Key>,
    /// The key of each post.
    pub posts: Vec<usize>,
}

impl Plan {
    /// `posts` posts of which `reuse_percent` percent (rounded down) reuse
    /// an earlier, randomly chosen key; the reuses are spread evenly.
    pub fn new(posts: usize, reuse_percent: usize) -> Self {
        let mut plan = Self {
            keys: Vec::new(),
            posts: Vec::with_capacity(posts),
        };
        for p in 0..posts {
            let reuse = (p + 1) * reuse_percent / 100 != p * reuse_percent / 100;
            let key = if reuse && !plan.keys.is_empty() {
                rand::random_range(0..plan.keys.len())
            } else {
                let n = plan.keys.len();
                let fault = random_fault();
                let rcpt = match fault {
                    Some(fault) => format!("user{n}+{fault}@{DOMAIN}"),
                    None => format!("user{n}@{DOMAIN}"),
                };
                let cc = (fault.is_none() && rand::random_range(0..100) < 15)
                    .then(|| format!("user{n}+cc@{DOMAIN}"));
                let send_in = (rand::random_range(0..100) < 10)
                    .then(|| Duration::from_millis(rand::random_range(2000..=5000)));
                plan.keys.push(Key {
                    tenant: format!("chaos{}", n % TENANTS),
                    key: format!("chaos:{}", n / TENANTS),
                    rcpt,
                    fault,
                    cc,
                    send_in,
                    cancel: rand::random_range(0..100) < 6,
                    attachment: rand::random_range(0..100) < 10,
                    priority: PRIORITIES[(n / TENANTS) % PRIORITIES.len()],
                });
                n
            };
            plan.posts.push(key);
        }
        plan
    }

    /// The key a recipient seen by the SMTP server belongs to.
    pub fn key_of_rcpt(&self, rcpt: &str) -> Option<usize> {
        let local = rcpt.strip_suffix(DOMAIN)?.strip_suffix('@')?;
        let n: usize = local
            .split('+')
            .next()?
            .strip_prefix("user")?
            .parse()
            .ok()?;
        self.keys.get(n).filter(|key| key.rcpt == rcpt).map(|_| n)
    }

    /// The key a `tenant/key` names (see [`Key::scoped`]).
    pub fn key_of(&self, scoped: &str) -> Option<usize> {
        let (tenant, key) = scoped.split_once('/')?;
        let t: usize = tenant.strip_prefix("chaos")?.parse().ok()?;
        let m: usize = key.strip_prefix("chaos:")?.parse().ok()?;
        let n = m.checked_mul(TENANTS)?.checked_add(t)?;
        self.keys.get(n).filter(|k| k.scoped() == scoped).map(|_| n)
    }

    /// The first post of each key, by key.
    pub fn first_posts(&self) -> Vec<usize> {
        let mut first = vec![usize::MAX; self.keys.len()];
        for (index, &key) in self.posts.iter().enumerate() {
            first[key] = first[key].min(index);
        }
        first
    }

    /// How many posts reuse a key posted before.
    pub fn reused_posts(&self) -> usize {
        self.posts.len() - self.keys.len()
    }
}

/// The mix of recipients: mostly healthy, then every fault the issue names
/// (4xx at RCPT, 5xx, a slow reply to the data, a connection cut after the
/// data), plus transient failures that succeed on a retry.
fn random_fault() -> Option<Fault> {
    match rand::random_range(0..100) {
        0..55 => None,
        55..65 => Some(Fault::Flaky(rand::random_range(1..=2))),
        65..75 => Some(Fault::SlowData(Duration::from_millis(rand::random_range(
            200..=1200,
        )))),
        75..80 => Some(Fault::TempfailRcpt),
        80..85 => Some(Fault::RejectRcpt),
        85..90 => Some(Fault::RejectData),
        _ => Some(Fault::DropAfterData),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_posts_reuse_an_earlier_key() {
        let plan = Plan::new(1000, 25);
        assert_eq!(plan.posts.len(), 1000);
        assert_eq!(plan.reused_posts(), 250);
        for (p, &key) in plan.posts.iter().enumerate() {
            assert!(key <= p, "post {p} uses key {key} before it exists");
        }
    }

    #[test]
    fn recipients_map_back_to_their_keys() {
        let plan = Plan::new(200, 20);
        for (n, key) in plan.keys.iter().enumerate() {
            assert_eq!(plan.key_of_rcpt(&key.rcpt), Some(n));
        }
        assert_eq!(plan.key_of_rcpt("user0+nonsense@chaos.test"), None);
        assert_eq!(plan.key_of_rcpt("user999999@chaos.test"), None);
        assert_eq!(plan.key_of_rcpt("someone@example.com"), None);
        assert_eq!(plan.key_of("chaos1/chaos:1"), Some(4));
        assert_eq!(plan.keys[4].scoped(), "chaos1/chaos:1");
        assert_eq!(plan.keys[3].key, plan.keys[4].key, "one key, two tenants");
        assert_eq!(plan.key_of("chaos0/chaos:999999"), None);
        assert_eq!(plan.key_of("chaos:3"), None);
        assert_eq!(plan.key_of("default/welcome:3"), None);
    }

    #[test]
    fn every_tenant_posts_jobs_of_every_priority() {
        let plan = Plan::new(60, 20);
        for tenant in 0..TENANTS {
            for priority in PRIORITIES {
                assert!(
                    plan.keys
                        .iter()
                        .any(|k| k.tenant_index() == tenant && k.priority == priority),
                    "chaos{tenant} posts no {priority} job"
                );
            }
        }
        assert_eq!(plan.keys[0].body(None)["priority"], "high");
    }
}
