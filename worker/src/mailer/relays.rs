//! Several SMTP relays: the list in `SMTP_URL`, which relay a send tries
//! first, which ones it skips for a while, and which replies say that a
//! relay, rather than a message, is over its limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use super::SmtpSettings;

/// How sends are shared between the relays of `SMTP_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RelayPolicy {
    /// The first available relay, in `SMTP_URL` order; the rest are spares.
    Failover,
    /// Round-robin over the available relays.
    Spread,
}

/// The relays of `SMTP_URL`, in order; each has its own URL, so its own
/// credentials and TLS.
#[derive(Debug, Clone)]
pub struct SmtpRelays(Vec<SmtpSettings>);

impl SmtpRelays {
    /// Parses a comma-separated list of lettre URLs. An error names the
    /// entry by position, never by its text, which may hold a password.
    pub fn parse(s: &str) -> Result<Self, String> {
        let entries: Vec<&str> = s.split(',').map(str::trim).collect();
        let n = entries.len();
        let relays = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let parsed = if entry.is_empty() {
                    Err("is empty".to_owned())
                } else {
                    SmtpSettings::from_url(entry)
                };
                parsed.map_err(|e| match n {
                    1 => e,
                    _ => format!(
                        "entry {} of {n}: {e} (entries are separated by commas; \
                         a comma inside a URL, as in a password, is written %2C)",
                        i + 1
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(relays))
    }

    /// The relays, in `SMTP_URL` order.
    pub fn iter(&self) -> impl Iterator<Item = &SmtpSettings> {
        self.0.iter()
    }

    /// How many relays there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which relays a send tries, and in what order. Holds each relay's
/// cooldown: a relay that refused a connection, did not answer one in
/// time, or said it is over its limit is skipped until its cooldown ends.
#[derive(Debug)]
pub struct RelayChooser {
    policy: RelayPolicy,
    cooldown: Duration,
    /// Per relay, until when it is skipped.
    cooling_until: Mutex<Vec<Option<Instant>>>,
    /// Where `Spread` starts its next round.
    next: AtomicUsize,
}

impl RelayChooser {
    /// A chooser over `relays` relays, all available.
    pub fn new(relays: usize, policy: RelayPolicy, cooldown: Duration) -> Self {
        Self {
            policy,
            cooldown,
            cooling_until: Mutex::new(vec![None; relays]),
            next: AtomicUsize::new(0),
        }
    }

    /// The relays one send tries, in order, each once: the available ones,
    /// by the policy. When every relay is cooling down, the one whose
    /// cooldown ends first: a send never waits for a relay, and a single
    /// relay is always tried, as if there were no cooldowns.
    pub fn candidates(&self, now: Instant) -> Vec<usize> {
        let cooling = self.lock();
        let mut available: Vec<usize> = (0..cooling.len())
            .filter(|&i| cooling[i].is_none_or(|until| until <= now))
            .collect();
        if available.is_empty() {
            let soonest = (0..cooling.len()).min_by_key(|&i| cooling[i]);
            return soonest.into_iter().collect();
        }
        if self.policy == RelayPolicy::Spread {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % available.len();
            available.rotate_left(start);
        }
        available
    }

    /// Skips relay `i` for the cooldown, from `now`.
    pub fn cool_down(&self, i: usize, now: Instant) {
        self.lock()[i] = Some(now + self.cooldown);
    }

    /// Relay `i` took a transaction: available again, even before its
    /// cooldown ends.
    pub fn recovered(&self, i: usize) {
        self.lock()[i] = None;
    }

    /// How long until some relay is available; zero when one is.
    pub fn next_available_in(&self, now: Instant) -> Duration {
        self.lock()
            .iter()
            .map(|until| until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now)))
            .min()
            .unwrap_or(Duration::ZERO)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Instant>>> {
        self.cooling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a reply says the relay is over its limit (too many connections
/// or messages, a rate limit) rather than anything about the message:
/// `421` (the server is closing the channel), `451` with an enhanced code
/// of class 4.7 (security or policy: rate limits), and `454`.
pub fn says_relay_is_busy(e: &lettre::transport::smtp::Error) -> bool {
    let Some(code) = e.status() else {
        return false;
    };
    match code.to_string().as_str() {
        "421" | "454" => true,
        "451" => std::error::Error::source(e)
            .is_some_and(|text| text.to_string().trim_start().starts_with("4.7.")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn a_list_of_urls_is_parsed_in_order_and_one_url_is_a_list_of_one() {
        let one = SmtpRelays::parse("smtp://127.0.0.1:1025").expect("one");
        assert_eq!(one.len(), 1);
        let two =
            SmtpRelays::parse("smtp://a.example:25, smtps://user:pass@b.example").expect("two");
        let hosts: Vec<_> = two.iter().map(SmtpSettings::name).collect();
        assert_eq!(hosts, ["a.example:25", "b.example:465"]);
    }

    #[test]
    fn a_bad_entry_is_named_by_position_without_its_text() {
        let bad = SmtpRelays::parse("smtp://a.example,http://user:s3cret@b.example")
            .expect_err("a bad second entry");
        assert!(bad.starts_with("entry 2 of 2: scheme http"), "{bad}");
        assert!(!bad.contains("s3cret") && !bad.contains("user"), "{bad}");
        let empty = SmtpRelays::parse("smtp://a.example,").expect_err("a trailing comma");
        assert!(empty.starts_with("entry 2 of 2: is empty"), "{empty}");
        let split = SmtpRelays::parse("smtp://user:pa,ss@a.example").expect_err("a bare comma");
        assert!(split.contains("%2C") && !split.contains("pa,ss"), "{split}");
        let single = SmtpRelays::parse("smtp://x?tls=maybe").expect_err("one bad URL");
        assert!(!single.starts_with("entry"), "{single}");
    }

    #[test]
    fn failover_tries_the_relays_in_order_skipping_those_cooling_down() {
        let chooser = RelayChooser::new(3, RelayPolicy::Failover, COOLDOWN);
        let now = Instant::now();
        assert_eq!(chooser.candidates(now), [0, 1, 2]);
        assert_eq!(
            chooser.candidates(now),
            [0, 1, 2],
            "failover does not rotate"
        );

        chooser.cool_down(0, now);

        assert_eq!(chooser.candidates(now), [1, 2]);
        assert_eq!(chooser.candidates(now + COOLDOWN / 2), [1, 2]);
        assert_eq!(
            chooser.candidates(now + COOLDOWN),
            [0, 1, 2],
            "cooldown over"
        );
    }

    #[test]
    fn a_relay_that_took_a_transaction_is_available_before_its_cooldown_ends() {
        let chooser = RelayChooser::new(2, RelayPolicy::Failover, COOLDOWN);
        let now = Instant::now();
        chooser.cool_down(0, now);

        chooser.recovered(0);

        assert_eq!(chooser.candidates(now), [0, 1]);
    }

    #[test]
    fn when_every_relay_cools_down_the_one_whose_cooldown_ends_first_is_tried() {
        let chooser = RelayChooser::new(3, RelayPolicy::Spread, COOLDOWN);
        let now = Instant::now();
        chooser.cool_down(1, now);
        chooser.cool_down(2, now + Duration::from_secs(1));
        chooser.cool_down(0, now + Duration::from_secs(2));
        let later = now + Duration::from_secs(3);

        assert_eq!(chooser.candidates(later), [1]);
        assert_eq!(
            chooser.next_available_in(later),
            COOLDOWN - Duration::from_secs(3)
        );

        chooser.recovered(2);

        assert_eq!(chooser.next_available_in(later), Duration::ZERO);
    }

    #[test]
    fn a_single_relay_is_always_tried() {
        let chooser = RelayChooser::new(1, RelayPolicy::Failover, COOLDOWN);
        let now = Instant::now();
        chooser.cool_down(0, now);

        assert_eq!(chooser.candidates(now), [0]);
    }

    #[test]
    fn spread_starts_each_send_at_the_next_available_relay() {
        let chooser = RelayChooser::new(3, RelayPolicy::Spread, COOLDOWN);
        let now = Instant::now();
        let firsts: Vec<usize> = (0..6).map(|_| chooser.candidates(now)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(
            chooser.candidates(now),
            [0, 1, 2],
            "the rest follow as spares"
        );

        chooser.cool_down(1, now);

        let firsts: Vec<usize> = (0..4).map(|_| chooser.candidates(now)[0]).collect();
        assert!(!firsts.contains(&1), "{firsts:?}");
        assert!(firsts.contains(&0) && firsts.contains(&2), "{firsts:?}");
    }
}
