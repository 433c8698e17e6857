//! Numeric settings from the environment, read the same way by every process: a whole number, or the
//! default when the variable is unset or empty.

use std::time::Duration;

use anyhow::Context;

pub fn number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        Some(value) => value
            .parse()
            .with_context(|| format!("{name} must be a whole number, not {value:?}")),
        None => Ok(default),
    }
}

pub fn seconds(name: &str, default_seconds: u64) -> anyhow::Result<Duration> {
    number(name, default_seconds).map(Duration::from_secs)
}
