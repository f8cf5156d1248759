//! Logging for a mesh binary: a `tracing` subscriber writing to stderr, plain or JSON, whose
//! filter the admin listener can change at run time.

use crate::admin::LogControl;
use crate::config::LogFormat;

/// Installs the process's subscriber with `filter` (env-filter syntax; `info` if it does not
/// parse) and returns the control that `/log-level` uses to change the filter.
pub fn init(filter: &str, format: LogFormat) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (env_filter, handle) = tracing_subscriber::reload::Layer::new(env_filter);
    let registry = tracing_subscriber::registry().with(env_filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Plain => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    LogControl::new(filter.to_owned(), move |text| {
        let filter = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Whether `filter` parses as an env-filter; the error says why not.
pub fn check_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
