use std::time::Duration;

use clap::Parser;
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;
use sendonce_testkit::{TestDatabase, unique_prefix};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// A running API with its own database and Redis key prefix.
pub struct TestApi {
    pub address: String,
    pub client: reqwest::Client,
    pub keys: JwtKeys,
    pub prefix: String,
    pub redis_url: String,
    db: TestDatabase,
    _stop: oneshot::Sender<()>,
}

pub async fn spawn_api() -> TestApi {
    spawn_api_on_redis(shared_redis_url()).await
}

/// The Redis every test shares (keys isolated by prefix).
pub fn shared_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A path under `api/tests/fixtures`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A running API on the given Redis, such as a test's private one.
pub async fn spawn_api_on_redis(redis_url: String) -> TestApi {
    spawn_api_configured(redis_url, &["--jwt-secret", SECRET]).await
}

/// Like [`spawn_api`], with `settings` (flags) instead of the HS256 secret.
pub async fn spawn_api_with(settings: &[&str]) -> TestApi {
    spawn_api_configured(shared_redis_url(), settings).await
}

async fn spawn_api_configured(redis_url: String, settings: &[&str]) -> TestApi {
    spawn_api_sharing(redis_url, unique_prefix(), settings).await
}

/// Like [`spawn_api_with`], on the given Redis.
pub async fn spawn_api_on_redis_with(redis_url: String, settings: &[&str]) -> TestApi {
    spawn_api_configured(redis_url, settings).await
}

/// Another API replica: the same Redis and key prefix as `other`, its own
/// database and process state.
pub async fn spawn_replica_of(other: &TestApi, settings: &[&str]) -> TestApi {
    spawn_api_sharing(other.redis_url.clone(), other.prefix.clone(), settings).await
}

async fn spawn_api_sharing(redis_url: String, prefix: String, settings: &[&str]) -> TestApi {
    let db = TestDatabase::create().await;
    let config = ApiConfig::parse_from(
        [
            "sendonce-api",
            "--api-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--database-url",
            db.url(),
            "--redis-url",
            &redis_url,
            "--redis-key-prefix",
            &prefix,
        ]
        .iter()
        .chain(settings),
    );
    let keys = JwtKeys::from_config(&config).expect("JWT settings");
    let app = sendonce_api::Application::build(config, None)
        .await
        .expect("build the API");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApi {
        address,
        client: reqwest::Client::new(),
        keys,
        prefix,
        redis_url,
        db,
        _stop: stop,
    }
}

impl TestApi {
    /// This API's database.
    pub fn db(&self) -> &TestDatabase {
        &self.db
    }

    pub fn token(&self, scope: &str) -> String {
        self.keys
            .mint("tests", scope, Duration::from_secs(600))
            .expect("mint a token")
    }

    /// `method` `path` with `token`, no body.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    pub async fn post_job(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/addJob", self.address))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST /addJob")
    }

    pub async fn post_jobs(&self, token: &str, jobs: &[Value]) -> reqwest::Response {
        self.client
            .post(format!("{}/addJobs", self.address))
            .bearer_auth(token)
            .json(&json!({ "jobs": jobs }))
            .send()
            .await
            .expect("POST /addJobs")
    }

    /// A connection to this API's Redis.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// How many jobs this API's database recorded.
    pub async fn recorded(&self) -> i64 {
        self.db()
            .connect()
            .await
            .query_one("SELECT count(*) FROM deliveries", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// Asserts that nothing was recorded or queued.
    pub async fn assert_nothing_stored(&self) {
        assert_eq!(self.recorded().await, 0, "nothing was recorded");
        assert_eq!(self.queue_len().await, 0, "nothing was queued");
    }

    /// How many tasks wait in this API's queue.
    pub async fn queue_len(&self) -> usize {
        let mut conn = self.redis().await;
        redis::cmd("LLEN")
            .arg(format!("{{{}}}:queue", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("LLEN")
    }
}

/// Dead-letters job `id` as a worker giving up would; answers its entry id.
pub async fn dead_letter(api: &TestApi, id: &str) -> i64 {
    let job: uuid::Uuid = id.parse().expect("a job id");
    api.db()
        .connect()
        .await
        .query_one(
            "WITH given_up AS (
                 UPDATE deliveries SET state = 'failed' WHERE job_id = $1
                 RETURNING job_id, tenant, idempotency_key, task)
             INSERT INTO failed_jobs (job_id, tenant, idempotency_key, task, reason, error, attempts)
             SELECT job_id, tenant, idempotency_key, task, 'failed', 'boom', 1 FROM given_up
             RETURNING id",
            &[&job],
        )
        .await
        .expect("a dead letter")
        .get(0)
}

pub fn valid_body() -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": "Hello"})
}

/// Asserts an RFC 9457 problem answer with `status` whose detail mentions `needle`.
pub async fn assert_problem(response: reqwest::Response, status: u16, needle: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.expect("a JSON problem");
    assert_eq!(problem["status"], status);
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(needle),
        "detail {detail:?} does not mention {needle:?}"
    );
    problem
}

/// Keys that mint HS256 tokens with `secret`, as an API configured with it would.
pub fn hs256_keys(secret: &str) -> JwtKeys {
    let config = ApiConfig::parse_from(["sendonce-api", "--jwt-secret", secret]);
    JwtKeys::from_config(&config).expect("JWT settings")
}

/// The `WWW-Authenticate` challenge of `response`, or "".
pub fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl TestApi {
    /// A token of `tenant` with `scope`.
    pub fn tenant_token(&self, tenant: &str, scope: &str) -> String {
        let extra = serde_json::Map::from_iter([("tenant".to_owned(), json!(tenant))]);
        self.keys
            .mint_with("app", scope, Duration::from_secs(600), extra)
            .expect("mint a token")
    }

    /// `method` `path` with `token` and, if given, a JSON `body`; answers
    /// the status and the JSON body (`null` when there is none).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
