//! The runtime's log output: one `tracing` subscriber per process, writing to stderr either
//! in colo's human format (the default) or as one JSON object per line (`--log-format json`),
//! filtered by `--log-level` or else `RUST_LOG` (default `info`).
//!
//! Every event the runtime emits names its subject in a `role` field (`primary`, `secondary`,
//! `arbiter`, ...) and says what happened in its message (`checkpoint-done`, `failed-over`,
//! ...); the rest are `key=value` fields. Invariant: the human format renders an event as
//! `<role>: <message> key=value ...` (warnings and errors: `colo <role>: <message> ...`; no
//! role: `colo: <message> ...`), one line per event written with one `write`, so the lines
//! operators read stay stable while log shippers get the same fields typed in JSON (programs
//! read the milestones from `crate::pair::events` instead).

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `<role>: <message> key=value ...`, one line per event.
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `role` and the
    /// event's fields at the top level.
    Json,
}

/// Installs the process's subscriber. `level` (a `RUST_LOG`-style directive such as `debug`
/// or `colo_runtime::pair::arbiter=debug`) wins over the `RUST_LOG` environment variable; neither
/// means `info`. A second call in the same process is an error, as is a bad directive.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(directive) => {
            EnvFilter::try_new(directive).map_err(|e| format!("--log-level {directive:?}: {e}"))?
        }
        None => match std::env::var("RUST_LOG") {
            Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(&directive)
                .map_err(|e| format!("RUST_LOG={directive:?}: {e}"))?,
            _ => EnvFilter::new("info"),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Human => builder.event_format(HumanFormat).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// colo's human line format (see the module invariant).
#[derive(Clone, Copy, Debug)]
pub struct HumanFormat;

impl<S, N> FormatEvent<S, N> for HumanFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        writeln!(writer, "{}", human_line(event))
    }
}

/// The event as one human line, without the newline.
fn human_line(event: &Event<'_>) -> String {
    let mut fields = HumanFields::default();
    event.record(&mut fields);
    let severe = *event.metadata().level() <= Level::WARN;
    let mut line = String::new();
    match (&fields.role, severe) {
        (Some(role), false) => {
            let _ = write!(line, "{role}: ");
        }
        (Some(role), true) => {
            let _ = write!(line, "colo {role}: ");
        }
        (None, _) => line.push_str("colo: "),
    }
    line.push_str(&fields.message);
    line.push_str(&fields.rest);
    line
}

/// Collects an event's message, role and other fields (` key=value` each, in order).
#[derive(Default)]
struct HumanFields {
    message: String,
    role: Option<String>,
    rest: String,
}

impl Visit for HumanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "role" => self.role = Some(value.to_string()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "role" => self.role = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// A `tracing` writer that keeps what a subscriber wrote (the tests of this module and of
/// `progress`).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).expect("subscribers write UTF-8")
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Captured) -> String {
        c.text()
    }

    #[derive(Debug)]
    enum Reason {
        Periodic,
    }

    #[test]
    fn human_lines_put_the_role_first_and_fields_after_the_message() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .event_format(HumanFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(role = "primary", epoch = 3u64, reason = ?Reason::Periodic, digest = None::<&str>, "checkpoint-done");
            tracing::warn!(role = "secondary", "peer socket: {}", "reset");
            tracing::info!("state saved");
        });
        assert_eq!(
            text(&out),
            "primary: checkpoint-done epoch=3 reason=Periodic\n\
             colo secondary: peer socket: reset\n\
             colo: state saved\n"
        );
    }

    #[test]
    fn json_lines_carry_the_fields_typed_at_the_top_level() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(role = "primary", epoch = 3u64, pause_us = 1500u64, reason = ?Reason::Periodic, "checkpoint-done");
        });
        let line = text(&out);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["message"], "checkpoint-done");
        assert_eq!(v["role"], "primary");
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["pause_us"], 1500);
        assert_eq!(v["reason"], "Periodic");
        assert_eq!(v["level"], "INFO");
    }
}
