//! A webhook receiver: a real HTTP/1.1 server on `127.0.0.1` that records
//! every request it is sent (headers and body) and answers as told: a
//! status, a seeded fraction of failures, a stall (no answer until
//! released), or nothing at all (down: the port refuses connections until
//! [`WebhookReceiver::up`] binds it again).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::process::eventually;

/// One request as the receiver read it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// `POST`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Every header, names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body's bytes.
    pub body: Vec<u8>,
    /// The status answered; `None` for a stalled request not (yet)
    /// answered.
    pub answered: Option<u16>,
}

impl ReceivedRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// If it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether the request was answered with a 2xx.
    pub fn delivered(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// The status of a request that is not failed or stalled.
    status: u16,
    /// The fraction of requests answered `fail_status` instead.
    fail_fraction: f64,
    fail_status: u16,
    /// Requests still to stall before answering normally again.
    stall_next: usize,
}

struct Shared {
    behaviour: Behaviour,
    requests: Vec<ReceivedRequest>,
    /// SplitMix64 state: the same seed fails the same requests.
    rng: u64,
}

/// The receiver. Dropping it stops it.
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    /// Bumped by [`WebhookReceiver::release`]: stalled requests answer.
    released: watch::Sender<u64>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// Starts on a free port, answering `204` to everything.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let shared = Arc::new(Mutex::new(Shared {
            behaviour: Behaviour {
                status: 204,
                fail_fraction: 0.0,
                fail_status: 500,
                stall_next: 0,
            },
            requests: Vec::new(),
            rng: 0,
        }));
        let (released, _) = watch::channel(0);
        let receiver = Self {
            addr,
            shared,
            released,
            server: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// The URL to register: `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The address it listens on (also while down: the port it comes back
    /// on).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `status` from now on.
    pub fn respond_with(&self, status: u16) {
        self.lock().behaviour.status = status;
    }

    /// Answers `status` to a `fraction` of requests, chosen by a generator
    /// seeded with `seed`.
    pub fn fail_fraction(&self, fraction: f64, status: u16, seed: u64) {
        let mut shared = self.lock();
        shared.behaviour.fail_fraction = fraction;
        shared.behaviour.fail_status = status;
        shared.rng = seed;
    }

    /// Stalls the next `n` requests: read and recorded, never answered
    /// until [`WebhookReceiver::release`] (or the client gives up).
    pub fn stall_next(&self, n: usize) {
        self.lock().behaviour.stall_next = n;
    }

    /// Lets every stalled request answer as the receiver answers now.
    pub fn release(&self) {
        self.released.send_modify(|generation| *generation += 1);
    }

    /// Goes down: the listener is closed (connections are refused) and
    /// every open connection is dropped, stalled requests included.
    pub async fn down(&self) {
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }

    /// Comes back on the same port.
    pub async fn up(&self) {
        let listener = eventually(
            "the receiver's port to bind again",
            Duration::from_secs(10),
            || async { TcpListener::bind(self.addr).await.ok() },
        )
        .await;
        self.serve(listener);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.lock().requests.clone()
    }

    /// Waits until `done` holds for the requests received.
    pub async fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[ReceivedRequest]) -> bool,
    ) -> Vec<ReceivedRequest> {
        eventually(what, deadline, || async {
            let requests = self.requests();
            done(&requests).then_some(requests)
        })
        .await
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let released = self.released.subscribe();
        let task = tokio::spawn(async move {
            // Dropped with this task: `down` closes every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                let released = released.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        answer(Arc::clone(&shared), released.clone(), request)
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            server.abort();
        }
    }
}

async fn answer(
    shared: Arc<Mutex<Shared>>,
    mut released: watch::Receiver<u64>,
    request: Request<Incoming>,
) -> Result<Response<Full<&'static [u8]>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (index, stall) = {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let stall = shared.behaviour.stall_next > 0;
        if stall {
            shared.behaviour.stall_next -= 1;
        }
        shared.requests.push(ReceivedRequest {
            method: parts.method.to_string(),
            path: parts.uri.to_string(),
            headers,
            body,
            answered: None,
        });
        (shared.requests.len() - 1, stall)
    };
    if stall {
        let seen = *released.borrow_and_update();
        // Until released; a receiver going down drops this future.
        let _ = released.wait_for(|generation| *generation != seen).await;
    }
    let status = {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let behaviour = shared.behaviour;
        let fail =
            behaviour.fail_fraction > 0.0 && next_unit(&mut shared.rng) < behaviour.fail_fraction;
        let status = if fail {
            behaviour.fail_status
        } else {
            behaviour.status
        };
        shared.requests[index].answered = Some(status);
        status
    };
    let mut response = Response::new(Full::new(&b""[..]));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    Ok(response)
}

/// The next number in `[0, 1)` from SplitMix64.
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn post(url: &str) -> Result<u16, String> {
        let url = url::Url::parse(url).expect("a URL");
        let addr = format!(
            "{}:{}",
            url.host_str().expect("a host"),
            url.port().expect("a port")
        );
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nwebhook-id: evt_1\r\nContent-Length: 2\r\n\r\n{{}}",
            url.path()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(answer)
    }

    #[tokio::test]
    async fn it_records_requests_answers_as_told_and_comes_back_on_its_port() {
        let receiver = WebhookReceiver::start().await;

        assert_eq!(post(&receiver.url()).await, Ok(204));
        receiver.respond_with(503);
        assert_eq!(post(&receiver.url()).await, Ok(503));
        receiver.down().await;
        assert!(post(&receiver.url()).await.is_err(), "down refuses");
        receiver.up().await;
        receiver.respond_with(200);
        assert_eq!(post(&receiver.url()).await, Ok(200));

        let requests = receiver.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].header("Webhook-Id"), Some("evt_1"));
        assert_eq!(requests[0].json(), serde_json::json!({}));
        assert_eq!(requests[0].path, "/hook");
        let answered: Vec<_> = requests.iter().map(|r| r.answered).collect();
        assert_eq!(answered, [Some(204), Some(503), Some(200)]);
    }

    #[tokio::test]
    async fn a_stalled_request_is_recorded_unanswered_until_released() {
        let receiver = WebhookReceiver::start().await;
        receiver.stall_next(1);
        let url = receiver.url();
        let stalled = tokio::spawn(async move { post(&url).await });
        receiver
            .wait_until("the stalled request", Duration::from_secs(10), |r| {
                r.len() == 1
            })
            .await;

        assert_eq!(receiver.requests()[0].answered, None);
        assert_eq!(post(&receiver.url()).await, Ok(204), "others are answered");
        receiver.release();
        assert_eq!(stalled.await.expect("the stalled request"), Ok(204));
    }

    #[tokio::test]
    async fn the_same_seed_fails_the_same_requests() {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let receiver = WebhookReceiver::start().await;
            receiver.fail_fraction(0.5, 500, 42);
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(post(&receiver.url()).await.expect("an answer"));
            }
            runs.push(statuses);
        }

        assert_eq!(runs[0], runs[1]);
        let failed = runs[0].iter().filter(|s| **s == 500).count();
        assert!((3..=17).contains(&failed), "{:?}", runs[0]);
    }
}
