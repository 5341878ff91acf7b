//! The process's log: `tracing` events as text or as one JSON object per line, filtered by
//! `RUST_LOG` (`info` by default).
//!
//! Text carries colour codes only when stdout is a terminal (and `NO_COLOR` is unset): a log
//! redirected to a file or collected from a pipe must not be littered with escapes. JSON lists
//! every span an event is in with its fields (`spans`), so each line of a job carries its
//! `job_id` and `session_id` without a collector having to join lines.

use std::{io::IsTerminal, str::FromStr};

use tracing_subscriber::{
    layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer, Registry,
};

use crate::telemetry::Telemetry;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected `text` or `json`, not `{s}`")),
        }
    }
}

/// Installs the global subscriber writing to stdout in `format`, and with `otlp`, exporting
/// spans to that OTLP collector too ([`Telemetry`], to be shut down on exit).
pub fn init(format: LogFormat, otlp: Option<&str>) -> Result<Option<Telemetry>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer();
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match format {
        LogFormat::Text => fmt.with_ansi(colour()).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }];
    let telemetry = match otlp {
        Some(endpoint) => {
            let (telemetry, layer) = Telemetry::otlp(endpoint, "arcp-gateway")?;
            layers.push(layer.boxed());
            Some(telemetry)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();
    Ok(telemetry)
}

/// Whether text lines may carry colour codes.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
