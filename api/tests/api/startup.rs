use std::process::Command;

use clap::Parser;
use sendonce_api::auth::JwtKeys;
use sendonce_api::config::ApiConfig;

use crate::helpers::fixture;

const PUBLISHED: &str = "dev-only-insecure-jwt-secret-change-me-0123456789";

/// Starts the API binary with `env` and returns its exit status and stderr.
fn start_api(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .env_clear()
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .expect("run the API binary");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_refused(env: &[(&str, &str)], secret: &str, needle: &str) {
    let (status, stderr) = start_api(env);
    assert!(!status.success(), "the API started with {env:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} does not mention {needle}"
    );
    assert!(
        !stderr.contains(secret),
        "the secret was printed: {stderr:?}"
    );
}

fn config(args: &[&str]) -> ApiConfig {
    ApiConfig::try_parse_from(std::iter::once("sendonce-api").chain(args.iter().copied()))
        .expect("valid flags")
}

#[test]
fn a_weak_secret_stops_start_up() {
    assert_refused(
        &[("JWT_SECRET", "short-secret")],
        "short-secret",
        "JWT_SECRET",
    );
}

#[test]
fn the_published_development_secret_stops_start_up() {
    assert_refused(&[("JWT_SECRET", PUBLISHED)], PUBLISHED, "JWT_SECRET");
}

#[test]
fn development_tolerates_the_published_secret() {
    let development = config(&["--app-env", "development", "--jwt-secret", PUBLISHED]);
    assert!(JwtKeys::from_config(&development).is_ok());
    let production = config(&["--jwt-secret", PUBLISHED]);
    assert!(JwtKeys::from_config(&production).is_err());
}

#[test]
fn a_leeway_over_sixty_seconds_is_refused() {
    let error = ApiConfig::try_parse_from(["sendonce-api", "--jwt-leeway-secs", "61"])
        .expect_err("61 s of leeway was accepted");
    assert!(error.to_string().contains("jwt-leeway-secs"), "{error}");
}

#[test]
fn key_settings_that_do_not_fit_the_algorithm_are_refused_naming_the_variable() {
    let rsa = fixture("rsa-public.pem");
    let ec = fixture("ec-public.pem");
    let long = "a-private-secret-long-enough-for-hs256-0123";
    for (args, variable) in [
        (vec![], "JWT_SECRET"),
        (vec!["--jwt-algorithm", "RS256"], "JWT_PUBLIC_KEY_FILE"),
        (
            vec![
                "--jwt-algorithm",
                "RS256",
                "--jwt-public-key-file",
                "/nonexistent.pem",
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec!["--jwt-algorithm", "RS256", "--jwt-public-key-file", &ec],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            vec![
                "--jwt-algorithm",
                "RS256",
                "--jwt-public-key-file",
                &rsa,
                "--jwt-secret",
                long,
            ],
            "JWT_SECRET",
        ),
        (
            vec!["--jwt-secret", long, "--jwt-public-key-file", &rsa],
            "JWT_PUBLIC_KEY_FILE",
        ),
    ] {
        let error = JwtKeys::from_config(&config(&args)).expect_err("refused");
        assert!(
            format!("{error:#}").contains(variable),
            "{args:?}: {error:#}"
        );
    }
}

/// What the API binary logs before it stops on an unreachable database.
fn start_up_log(env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .env_clear()
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("JWT_SECRET", "a-private-secret-long-enough-for-hs256-0123")
        .envs(env.iter().copied())
        .output()
        .expect("run the API binary");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_unset_jwt_audience_is_warned_about_at_start_up_outside_development() {
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("\"WARN\"") && l.contains("JWT_AUDIENCE"))
    };

    assert!(warned(&start_up_log(&[])), "no warning about JWT_AUDIENCE");
    assert!(!warned(&start_up_log(&[("JWT_AUDIENCE", "sendonce")])));
    assert!(!warned(&start_up_log(&[("APP_ENV", "development")])));
}

#[test]
fn prune_needs_retention_days() {
    let output = Command::new(env!("CARGO_BIN_EXE_sendonce-api"))
        .arg("prune")
        .env_clear()
        .output()
        .expect("run the API binary");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("RETENTION_DAYS"));
}
