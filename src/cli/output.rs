//! Where `arcp-gateway client` prints what it shows: a progress bar on a terminal, plain lines
//! without one (no bar, no escape codes), or one JSON object a line for scripts.

use std::io::IsTerminal;

use super::{bar::Bar, line::print_line, shown::Shown};

/// The way the client prints.
pub enum Output {
    /// A progress bar, the other lines above it.
    Bar(Bar),
    /// One line of text for each thing shown.
    Plain,
    /// One JSON object a line.
    Json,
    /// Only the job's end, as the plain or JSON output prints it.
    End(Box<Output>),
}

impl Output {
    /// JSON lines if `json`, else a bar when stdout is a terminal and plain lines when not.
    pub fn choose(json: bool) -> Output {
        if json {
            Output::Json
        } else if std::io::stdout().is_terminal() {
            Output::Bar(Bar::new())
        } else {
            Output::Plain
        }
    }

    /// Only the end of the job, in JSON if `json` and a plain line if not: for a command that
    /// acts on a job rather than follow it.
    pub fn end_only(json: bool) -> Output {
        Output::End(Box::new(if json { Output::Json } else { Output::Plain }))
    }

    /// Prints `shown`.
    pub fn show(&mut self, shown: &Shown) {
        match self {
            Output::Bar(bar) => bar.show(shown),
            Output::Plain => print_line(&shown.text()),
            Output::Json => print_line(&shown.json().to_string()),
            Output::End(output) => {
                if matches!(shown, Shown::Ended { .. }) {
                    output.show(shown);
                }
            }
        }
    }

    /// Leaves the output as it is, for a command that stops before the job's end.
    pub fn abandon(&self) {
        if let Output::Bar(bar) = self {
            bar.abandon();
        }
    }
}
