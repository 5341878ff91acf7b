//! The progress bar `arcp-gateway client` draws on a terminal: fed by the job's `progress`
//! events, with every other line printed above it, so that the bar stays the last line.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{line::print_line, shown::Shown};

/// The bar while the total is known: `[=====>    ] 12/100 ticks`.
const WITH_TOTAL: &str = "{spinner} [{bar:40}] {pos}/{len} {msg}";
/// The bar before a total is known, or of a job that gives none: a spinner and the count.
const WITHOUT_TOTAL: &str = "{spinner} {pos} {msg}";

/// A job's progress bar on stdout.
pub struct Bar {
    bar: ProgressBar,
    has_total: bool,
}

impl Bar {
    /// A bar with no progress yet, drawn on stdout (the terminal the caller checked it is).
    pub fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(style(WITHOUT_TOTAL));
        Bar {
            bar,
            has_total: false,
        }
    }

    /// Shows `shown`: progress moves the bar, the end finishes it, the rest is printed above.
    pub fn show(&mut self, shown: &Shown) {
        match shown {
            Shown::Progress { progress: p, .. } => {
                if let Some(total) = p.total {
                    if !self.has_total {
                        self.bar.set_style(style(WITH_TOTAL));
                        self.has_total = true;
                    }
                    self.bar.set_length(count(total));
                }
                self.bar.set_position(count(p.current));
                let msg = [p.units.as_str(), p.message.as_str()]
                    .into_iter()
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.bar.set_message(msg);
            }
            Shown::Ended { .. } => {
                self.bar.finish();
                print_line(&shown.text());
            }
            _ => self.bar.println(shown.text()),
        }
    }

    /// Leaves the bar as it is drawn, for a command that stops before the job's end.
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}

impl Default for Bar {
    fn default() -> Bar {
        Bar::new()
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants that parse; the default style is a fallback that cannot
    // fail, should one not.
    ProgressStyle::with_template(template)
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A progress figure as the bar counts it: whole, and never negative.
fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}
