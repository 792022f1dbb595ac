//! Opening Redis connections, whatever the deployment: one server
//! (`redis://`, `rediss://` for TLS), a primary found through Sentinel
//! (`redis+sentinel://`, `rediss+sentinel://`) or a Cluster
//! (`redis+cluster://`, `rediss+cluster://`). The URL chooses.
//!
//! Every key of the queue shares one hash tag, so on a Cluster every script
//! and pipeline touches one slot; the cluster client follows `MOVED` and
//! `ASK` and refreshes its slot map after a failover. Through Sentinel, each
//! new connection asks the sentinels for the current primary, so replacing a
//! broken connection (see `shared.rs`) is what follows a failover.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, TlsCertificates, TlsMode, Value,
};

/// How long opening a connection (TCP, TLS, `HELLO`/`AUTH`, and through
/// Sentinel the questions to the sentinels) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Certificates for `rediss://` URLs: a CA for a private certificate
/// authority (else the system's roots) and an optional client certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM file of the CA(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (chain), for servers that ask.
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// The certificates, read from their files; `None` when nothing is set.
    fn certificates(&self) -> Result<Option<TlsCertificates>, String> {
        if !self.is_set() {
            return Ok(None);
        }
        let read = |var: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("{var} {}: {e}", path.display()))
        };
        let root_cert = match &self.ca_file {
            Some(path) => Some(read("REDIS_CA_FILE", path)?),
            None => None,
        };
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read("REDIS_CLIENT_CERT_FILE", cert)?,
                client_key: read("REDIS_CLIENT_KEY_FILE", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together: set both or neither"
                        .into(),
                );
            }
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// A Redis URL taken apart: which kind of deployment, and where.
#[derive(Debug, PartialEq, Eq)]
enum Topology {
    /// `redis://` or `rediss://`: one server (or a proxy).
    Single { tls: bool },
    /// `redis[s]+sentinel://[user:pass@]host:port[,host:port...]/master[/db]`.
    Sentinel {
        tls: bool,
        nodes: Vec<(String, u16)>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
    },
    /// `redis[s]+cluster://[user:pass@]host:port[,host:port...]`.
    Cluster {
        tls: bool,
        nodes: Vec<(String, u16)>,
        username: Option<String>,
        password: Option<String>,
    },
}

/// Parses a URL's kind. Errors never quote the URL (it may hold a password).
fn topology(url: &str) -> Result<Topology, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected a URL such as redis://host:6379")?;
    let (tls, kind) = match scheme {
        "redis" | "unix" | "redis+unix" => return Ok(Topology::Single { tls: false }),
        "rediss" => return Ok(Topology::Single { tls: true }),
        "redis+sentinel" => (false, "sentinel"),
        "rediss+sentinel" => (true, "sentinel"),
        "redis+cluster" => (false, "cluster"),
        "rediss+cluster" => (true, "cluster"),
        _ => {
            return Err(
                "unknown scheme: expected redis://, rediss://, redis+sentinel://, \
                        rediss+sentinel://, redis+cluster:// or rediss+cluster://"
                    .into(),
            );
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or(("", info));
            let decode = |s: &str| {
                url_decode(s).ok_or_else(|| "bad percent-encoding in the credentials".to_owned())
            };
            (
                (!user.is_empty()).then(|| decode(user)).transpose()?,
                (!pass.is_empty()).then(|| decode(pass)).transpose()?,
            )
        }
    };
    let nodes = hosts
        .split(',')
        .map(|node| {
            let (host, port) = node.rsplit_once(':').ok_or("every node needs host:port")?;
            let port: u16 = port.parse().map_err(|_| "a node's port is not a number")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("a node has no host");
            }
            Ok((host.to_owned(), port))
        })
        .collect::<Result<Vec<_>, &str>>()?;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    if kind == "sentinel" {
        let master = segments
            .next()
            .ok_or(
                "redis+sentinel:// needs the master's name: redis+sentinel://host:26379/mymaster",
            )?
            .to_owned();
        let db = match segments.next() {
            Some(db) => db.parse().map_err(|_| "the database is not a number")?,
            None => 0,
        };
        if segments.next().is_some() {
            return Err("expected redis+sentinel://hosts/master[/db]".into());
        }
        Ok(Topology::Sentinel {
            tls,
            nodes,
            master,
            db,
            username,
            password,
        })
    } else {
        if segments.next().is_some() {
            return Err("redis+cluster:// takes no path (a cluster has only database 0)".into());
        }
        Ok(Topology::Cluster {
            tls,
            nodes,
            username,
            password,
        })
    }
}

fn url_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a `REDIS_URL` without connecting.
pub fn validate_url(url: &str) -> Result<(), String> {
    match topology(url)? {
        Topology::Single { .. } => redis::Client::open(url)
            .map(drop)
            .map_err(|e| e.to_string()),
        Topology::Sentinel { .. } | Topology::Cluster { .. } => Ok(()),
    }
}

/// Opens connections to the Redis that `REDIS_URL` names. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    target: Arc<Target>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.target {
            Target::Single(_) => "single",
            Target::Sentinel(_) => "sentinel",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("Connector").field("kind", &kind).finish()
    }
}

enum Target {
    Single(redis::Client),
    /// Asking the sentinels needs `&mut`; opening is rare (start-up and
    /// after a broken connection), so a lock costs nothing.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

impl Connector {
    /// Builds the client for `url` with `tls`'s certificates (read now).
    /// Nothing connects yet.
    pub fn new(url: &str, tls: &RedisTls) -> Result<Self, String> {
        // rustls needs one process-wide crypto provider; several crates of
        // the build enable different ones, so name it. An error means one is
        // installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = tls.certificates()?;
        let topology = topology(url)?;
        let uses_tls = match &topology {
            Topology::Single { tls }
            | Topology::Sentinel { tls, .. }
            | Topology::Cluster { tls, .. } => *tls,
        };
        if certs.is_some() && !uses_tls {
            return Err(
                "REDIS_CA_FILE / REDIS_CLIENT_CERT_FILE are set but REDIS_URL is not TLS \
                 (use rediss://, rediss+sentinel:// or rediss+cluster://)"
                    .into(),
            );
        }
        let target = match topology {
            Topology::Single { .. } => Target::Single(
                match certs {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                }
                .map_err(|e| e.to_string())?,
            ),
            Topology::Sentinel {
                tls,
                nodes,
                master,
                db,
                username,
                password,
            } => {
                let addrs = nodes.into_iter().map(|(host, port)| {
                    if tls {
                        ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host, port)
                    }
                });
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                        .map_err(|e| e.to_string())?
                        .set_client_to_redis_db(db);
                if let Some(user) = username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(pass) = password {
                    builder = builder.set_client_to_redis_password(pass);
                }
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                Target::Sentinel(tokio::sync::Mutex::new(
                    builder.build().map_err(|e| e.to_string())?,
                ))
            }
            Topology::Cluster {
                tls,
                nodes,
                username,
                password,
            } => {
                let infos = nodes
                    .into_iter()
                    .map(|(host, port)| {
                        let scheme = if tls { "rediss" } else { "redis" };
                        format!("{scheme}://{host}:{port}").into_connection_info()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let mut builder = ClusterClient::builder(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(Duration::from_secs(2));
                if let Some(user) = username {
                    builder = builder.username(user);
                }
                if let Some(pass) = password {
                    builder = builder.password(pass);
                }
                if tls {
                    builder = builder.tls(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder.certs(certs);
                    }
                }
                Target::Cluster(builder.build().map_err(|e| e.to_string())?)
            }
        };
        Ok(Self {
            target: Arc::new(target),
        })
    }

    /// Opens a new connection whose commands time out after
    /// `response_timeout`. Through Sentinel, asks the sentinels for the
    /// current primary first.
    pub async fn open(&self, response_timeout: Duration) -> Result<Connection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let opening = async {
            match &*self.target {
                Target::Single(client) => Ok(Connection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )),
                Target::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await?;
                    Ok(Connection::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    ))
                }
                Target::Cluster(client) => Ok(Connection::Cluster(
                    client
                        .get_async_connection_with_config(
                            ClusterConfig::new()
                                .set_connection_timeout(CONNECT_TIMEOUT)
                                .set_response_timeout(response_timeout),
                        )
                        .await?,
                )),
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("opening a Redis connection took longer than {OPEN_TIMEOUT:?}"),
            ))),
        }
    }
}

/// A connection to one server (direct or found through Sentinel) or to a
/// Cluster. Clones share it.
#[derive(Clone)]
pub enum Connection {
    /// One multiplexed connection to one server.
    Single(MultiplexedConnection),
    /// The cluster client: one connection per node, routed by key slot.
    Cluster(ClusterConnection),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Connection::Single",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_nodes_master_and_db() {
        assert_eq!(
            topology("redis+sentinel://:pw@a:26379,b:26380/mymaster/2"),
            Ok(Topology::Sentinel {
                tls: false,
                nodes: vec![("a".into(), 26379), ("b".into(), 26380)],
                master: "mymaster".into(),
                db: 2,
                username: None,
                password: Some("pw".into()),
            })
        );
        assert!(topology("redis+sentinel://a:26379").is_err());
        assert!(topology("redis+sentinel://a/m").is_err());
    }

    #[test]
    fn cluster_urls_name_nodes() {
        assert_eq!(
            topology("rediss+cluster://u:p%40ss@a:7000,b:7001"),
            Ok(Topology::Cluster {
                tls: true,
                nodes: vec![("a".into(), 7000), ("b".into(), 7001)],
                username: Some("u".into()),
                password: Some("p@ss".into()),
            })
        );
        assert!(topology("redis+cluster://a:7000/1").is_err());
    }

    #[test]
    fn plain_and_tls_urls_are_single_servers() {
        assert_eq!(
            topology("redis://h:6379/0"),
            Ok(Topology::Single { tls: false })
        );
        assert_eq!(topology("rediss://h"), Ok(Topology::Single { tls: true }));
        assert!(validate_url("rediss://h:6380").is_ok());
        assert!(topology("http://h").is_err());
    }

    #[test]
    fn certificates_need_a_tls_url() {
        let tls = RedisTls {
            ca_file: Some("/dev/null".into()),
            ..RedisTls::default()
        };
        let err = Connector::new("redis://h:6379", &tls).expect_err("not TLS");
        assert!(err.contains("rediss://"), "{err}");
    }
}
