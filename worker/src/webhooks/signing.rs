//! Standard Webhooks signatures: `webhook-signature` is `v1,` and the
//! base64 HMAC-SHA256, keyed with the secret's bytes, of
//! `{webhook-id}.{webhook-timestamp}.{body}`. During a rotation's overlap
//! the previous secret signs too, and receivers holding either accept.

use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use standardwebhooks::{Webhook, WebhookError};

/// The headers of a signed request.
pub const ID: &str = "webhook-id";
/// Unix seconds of the attempt.
pub const TIMESTAMP: &str = "webhook-timestamp";
/// `v1,<base64>`, space-separated when two secrets sign.
pub const SIGNATURE: &str = "webhook-signature";

/// A signing failure: a stored secret that is not `whsec_` and base64.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's secret is not usable: {0}")]
pub struct BadSecret(#[source] WebhookError);

/// The `webhook-signature` of `body` sent as `id` at `timestamp`: one
/// `v1,...` per secret, the current one first.
pub fn sign(
    id: &str,
    timestamp: i64,
    body: &str,
    secret: &SecretString,
    previous: Option<&SecretString>,
) -> Result<String, BadSecret> {
    std::iter::once(secret)
        .chain(previous)
        .map(|s| {
            Webhook::new(s.expose_secret())
                .and_then(|hook| hook.sign(id, timestamp, body.as_bytes()))
                .map_err(BadSecret)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|signatures| signatures.join(" "))
}

/// Verifies a received request as a receiver does: one of the signatures
/// is `secret`'s, and the timestamp is within five minutes of now.
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
    Webhook::new(secret)?.verify(body, headers)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    /// The Standard Webhooks specification's own example.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (ID, id.to_owned()),
            (TIMESTAMP, timestamp.to_string()),
            (SIGNATURE, signature.to_owned()),
        ] {
            headers.insert(name, HeaderValue::from_str(&value).expect("a header value"));
        }
        headers
    }

    #[test]
    fn the_specification_example_signs_as_published() {
        let signature = sign(
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
            &SecretString::from(SPEC_SECRET),
            None,
        )
        .expect("signs");

        assert_eq!(signature, SPEC_SIGNATURE);
    }

    #[test]
    fn during_an_overlap_either_secret_verifies_and_a_wrong_one_does_not() {
        let current = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let now = chrono::Utc::now().timestamp();
        let signature = sign(
            "evt",
            now,
            "{}",
            &SecretString::from(current),
            Some(&SecretString::from(SPEC_SECRET)),
        )
        .expect("signs");
        let received = headers("evt", now, &signature);

        assert_eq!(signature.split(' ').count(), 2);
        verify(current, &received, b"{}").expect("the new secret verifies");
        verify(SPEC_SECRET, &received, b"{}").expect("the old secret verifies");
        let wrong = "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
        assert!(verify(wrong, &received, b"{}").is_err());
        assert!(
            verify(current, &received, b"{ }").is_err(),
            "a changed body"
        );
    }
}
