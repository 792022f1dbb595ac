//! The API's settings.

use std::net::SocketAddr;

use clap::Parser;
use secrecy::SecretString;
use sendonce_shared::config::CommonConfig;

/// Settings of `sendonce-api`.
#[derive(Debug, Clone, Parser)]
#[command(name = "sendonce-api")]
pub struct ApiConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on.
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,

    /// HS256 key that signs and verifies bearer tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: SecretString,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(s.to_owned()))
}
