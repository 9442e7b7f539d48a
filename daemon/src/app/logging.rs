//! Log output: level from `TOKEND_LOG`, plain lines without timestamps under
//! journald (which adds its own), JSON on request. Secrets are never passed
//! to a log macro; `Secret`'s Debug is redacted as a second line of defence.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TOKEND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The PostgreSQL client logs every statement and its parameters at
    // debug: sealed, but noise that would drown the daemon's own lines.
    let filter = match "tokio_postgres=warn".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    let journald = crate::app::service::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = match (format, journald) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}
