//! Progress bars for the slow steps (reading and quantizing weights, writing a quantized
//! folder): drawn on stderr only when it is a terminal, so logs, pipes and notebooks
//! receive no control characters.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar on stderr, or nothing when stderr is not a terminal. Cleared when dropped, so an
/// error leaves no half-drawn bar above its message.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `len` steps labelled `label`, when stderr is a terminal.
    pub(crate) fn new(label: &str, len: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = ProgressBar::new(len);
        // A literal template: it can only fail if edited wrong, and a bar is not worth an
        // error, so a bad one falls back to indicatif's default style.
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        Self { bar: Some(bar) }
    }

    /// No bar.
    pub(crate) fn hidden() -> Self {
        Self { bar: None }
    }

    /// One more step done.
    pub(crate) fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Text after the counter (what is being done now).
    pub(crate) fn set_message(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
