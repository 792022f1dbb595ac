//! The names of the Redis keys, and which shard an idempotency key's keys
//! live in.
//!
//! With `QUEUE_SHARDS = 1` (the default) every key carries the hash tag
//! `{prefix}`, as before sharding existed. With `k > 1` the keys of a task
//! (its queue, delayed set, processing lists, L1 dedup key, epoch, poison
//! list and worker leases) live under one of `{prefix:0}` .. `{prefix:k-1}`,
//! chosen by a CRC-32 of the idempotency key, so that on a Cluster the
//! shards spread over the masters while each script still touches one slot.
//! What is the fleet's, not a task's (the housekeeper, the published
//! depths, rate limits, the layout), stays under `{prefix}`.

use std::sync::Arc;

use crate::domain::{IdempotencyKey, Priority, Tenant};

/// Most shards `QUEUE_SHARDS` may name.
pub const MAX_SHARDS: u16 = 1024;

/// Names of the Redis keys under one prefix, in its shards.
#[derive(Debug, Clone)]
pub struct Keys {
    global: String,
    shards: Arc<[ShardKeys]>,
}

impl Keys {
    /// Keys under `prefix`, in one shard: `{prefix}:queue` and so on.
    pub fn new(prefix: &str) -> Self {
        Self::sharded(prefix, 1)
    }

    /// Keys under `prefix` spread over `shards` shards (at least 1; one
    /// shard keeps the unsharded names).
    pub fn sharded(prefix: &str, shards: u16) -> Self {
        let global = format!("{{{prefix}}}");
        let shards: Arc<[ShardKeys]> = if shards <= 1 {
            Arc::new([ShardKeys {
                tag: global.clone(),
            }])
        } else {
            (0..shards)
                .map(|i| ShardKeys {
                    tag: format!("{{{prefix}:{i}}}"),
                })
                .collect()
        };
        Self { global, shards }
    }

    /// How many shards there are.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The keys of shard `i` (taken modulo the shard count).
    pub fn shard(&self, i: usize) -> &ShardKeys {
        &self.shards[i % self.shards.len()]
    }

    /// Every shard's keys, in order.
    pub fn shards(&self) -> &[ShardKeys] {
        &self.shards
    }

    /// The shard that holds the task and L1 dedup key of `key` in
    /// `tenant`.
    pub fn shard_of(&self, tenant: &Tenant, key: &IdempotencyKey) -> usize {
        shard_of(tenant.as_str(), key.as_str(), self.shards.len())
    }

    /// The shard of a task as stored (its JSON), read from its
    /// `idempotency_key` without parsing the rest; shard 0 when it has none
    /// (a task that does not parse goes to the poison list from anywhere).
    pub fn shard_of_raw(&self, raw: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        #[derive(serde::Deserialize)]
        struct KeyOnly<'a> {
            #[serde(borrow)]
            idempotency_key: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            tenant: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_str::<KeyOnly<'_>>(raw).map_or(0, |task| {
            let tenant = task.tenant.as_deref().unwrap_or(Tenant::DEFAULT);
            shard_of(tenant, &task.idempotency_key, self.shards.len())
        })
    }

    /// The L1 dedup key of an idempotency key of `tenant`, in its shard.
    pub fn dedup(&self, tenant: &Tenant, key: &IdempotencyKey) -> String {
        self.shard(self.shard_of(tenant, key)).dedup(tenant, key)
    }

    /// The rate-limit state of a token subject.
    pub fn rate(&self, subject: &str) -> String {
        format!("{}:rate:{subject}", self.global)
    }
    /// Written by readiness probes, in the fleet's slot.
    pub fn ready(&self) -> String {
        format!("{}:ready", self.global)
    }
    /// The id of the worker doing the fleet's housekeeping.
    pub fn housekeeper(&self) -> String {
        format!("{}:housekeeper", self.global)
    }
    /// The queue depths the housekeeper last counted.
    pub fn depths(&self) -> String {
        format!("{}:depths", self.global)
    }
    /// An operator console session, by the SHA-256 of its cookie value
    /// (hex), so a copy of Redis holds no usable session.
    pub fn console_session(&self, digest: &str) -> String {
        format!("{}:console:{digest}", self.global)
    }
    /// The shard count the queue in this Redis was laid out with.
    pub fn layout(&self) -> String {
        format!("{}:shards", self.global)
    }

    /// The readiness key of every hash tag in use: the shards', and the
    /// fleet's when it is not also shard 0's.
    pub fn ready_keys(&self) -> impl Iterator<Item = String> {
        let global = (self.shards.len() > 1).then(|| self.ready());
        self.shards.iter().map(ShardKeys::ready).chain(global)
    }
}

/// The keys of one shard.
#[derive(Debug, Clone)]
pub struct ShardKeys {
    tag: String,
}

impl ShardKeys {
    /// The ready queue.
    pub fn queue(&self) -> String {
        format!("{}:queue", self.tag)
    }
    /// The ready tasks of one tenant at one priority, sorted out of the
    /// ready queue by the pops (see [`ShardKeys::tenant_queue_prefix`]).
    pub fn tenant_queue(&self, priority: Priority, tenant: &str) -> String {
        format!("{}{tenant}", self.tenant_queue_prefix(priority))
    }
    /// What a tenant's ready list at `priority` is named before the
    /// tenant: `tenant:` for `normal` (the name from before priorities, so
    /// that tasks sorted by an older worker are still served),
    /// `high:tenant:` and `low:tenant:` for the others.
    pub fn tenant_queue_prefix(&self, priority: Priority) -> String {
        match priority {
            Priority::Normal => format!("{}:tenant:", self.tag),
            other => format!("{}:{other}:tenant:", self.tag),
        }
    }
    /// The tenants with ready tasks sorted out at `priority`, in the order
    /// they are served: a pop takes a task of the first and moves it to
    /// the end. `tenants` for `normal` (as before priorities), else
    /// `high:tenants` and `low:tenants`.
    pub fn tenants(&self, priority: Priority) -> String {
        match priority {
            Priority::Normal => format!("{}:tenants", self.tag),
            other => format!("{}:{other}:tenants", self.tag),
        }
    }
    /// How many pops have taken a task from this shard's sorted lists: its
    /// remainder by [`super::PRIORITY_CYCLE`] says which priority the next
    /// pop tries first.
    pub fn priority_turn(&self) -> String {
        format!("{}:priority-turn", self.tag)
    }
    /// The delayed-retry sorted set.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.tag)
    }
    /// Worker leases: each registered worker, scored by its deadline.
    pub fn leases(&self) -> String {
        format!("{}:leases", self.tag)
    }
    /// A worker's processing list.
    pub fn processing(&self, worker: &str) -> String {
        format!("{}:processing:{worker}", self.tag)
    }
    /// The L1 dedup key of an idempotency key of `tenant` in this shard:
    /// `dedup:<key>` for the tenant `default` (as before tenants), else
    /// `tdedup:<length of the tenant>:<tenant>:<key>`, which no other
    /// tenant and key spell.
    pub fn dedup(&self, tenant: &Tenant, key: &IdempotencyKey) -> String {
        if tenant.is_default() {
            format!("{}:dedup:{key}", self.tag)
        } else {
            format!(
                "{}:tdedup:{}:{tenant}:{key}",
                self.tag,
                tenant.as_str().len()
            )
        }
    }
    /// The epoch: missing means this shard lost (or never had) the tasks
    /// of its waiting jobs.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.tag)
    }
    /// Where unparseable tasks are kept.
    pub fn poison(&self) -> String {
        format!("{}:poison", self.tag)
    }
    /// Written by readiness probes, in this shard's slot.
    pub fn ready(&self) -> String {
        format!("{}:ready", self.tag)
    }
}

/// CRC-32 (IEEE) of the key (for the tenant `default`) or of the tenant,
/// a NUL and the key, modulo the shard count: the same in every process and
/// release, which the layout depends on.
fn shard_of(tenant: &str, key: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let hash = if tenant == Tenant::DEFAULT {
        crc32fast::hash(key.as_bytes())
    } else {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(tenant.as_bytes());
        hasher.update(&[0]);
        hasher.update(key.as_bytes());
        hasher.finalize()
    };
    hash as usize % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_unsharded_names() {
        let keys = Keys::new("p");
        assert_eq!(keys.shard(0).queue(), "{p}:queue");
        assert_eq!(keys.housekeeper(), "{p}:housekeeper");
        assert_eq!(keys.ready_keys().collect::<Vec<_>>(), ["{p}:ready"]);
        assert_eq!(keys.shard_of_raw("not json"), 0);
    }

    #[test]
    fn shards_are_tagged_by_index_and_the_fleet_keeps_the_prefix() {
        let keys = Keys::sharded("p", 3);
        assert_eq!(keys.shard(2).queue(), "{p:2}:queue");
        assert_eq!(keys.shard(2).processing("w"), "{p:2}:processing:w");
        assert_eq!(keys.shard(2).tenants(Priority::Normal), "{p:2}:tenants");
        assert_eq!(keys.shard(2).tenants(Priority::High), "{p:2}:high:tenants");
        assert_eq!(
            keys.shard(2).tenant_queue(Priority::Low, "a"),
            "{p:2}:low:tenant:a"
        );
        assert_eq!(
            keys.shard(2).tenant_queue(Priority::Normal, "a"),
            "{p:2}:tenant:a"
        );
        assert_eq!(keys.depths(), "{p}:depths");
        assert_eq!(
            keys.ready_keys().collect::<Vec<_>>(),
            ["{p:0}:ready", "{p:1}:ready", "{p:2}:ready", "{p}:ready"]
        );
    }

    #[test]
    fn the_shard_is_a_stable_crc32_of_the_key() {
        // Pinned (Python's `zlib.crc32(b"welcome:user-42")` is 2362698533):
        // changing the hash would move live keys between shards.
        let keys = Keys::sharded("p", 12);
        let key = IdempotencyKey::parse("welcome:user-42").expect("a key");
        assert_eq!(crc32fast::hash(b"welcome:user-42"), 2_362_698_533_u32);
        let default = Tenant::default_tenant();
        assert_eq!(keys.shard_of(&default, &key), 5);
        assert_eq!(keys.dedup(&default, &key), "{p:5}:dedup:welcome:user-42");
    }

    #[test]
    fn a_stored_task_is_sharded_by_its_key() {
        let keys = Keys::sharded("p", 12);
        let raw = r#"{"job_id":"x","idempotency_key":"welcome:user-42","to":"a@b.c"}"#;
        assert_eq!(keys.shard_of_raw(raw), 5);
        let escaped = r#"{"idempotency_key":"welcome:user\u002d42"}"#;
        assert_eq!(
            keys.shard_of_raw(escaped),
            5,
            "JSON escapes are decoded first"
        );
    }

    #[test]
    fn another_tenant_has_its_own_l1_key_and_shard() {
        let keys = Keys::sharded("p", 12);
        let key = IdempotencyKey::parse("x").expect("a key");
        let billing = Tenant::parse("billing").expect("a tenant");
        let default = Tenant::default_tenant();
        let odd = IdempotencyKey::parse("7:billing:x").expect("a key");
        assert_ne!(keys.dedup(&billing, &key), keys.dedup(&default, &key));
        assert_ne!(keys.dedup(&billing, &key), keys.dedup(&default, &odd));
        assert!(keys.dedup(&billing, &key).ends_with(":tdedup:7:billing:x"));
        let raw = r#"{"idempotency_key":"x","tenant":"billing"}"#;
        assert_eq!(keys.shard_of_raw(raw), keys.shard_of(&billing, &key));
    }
}
