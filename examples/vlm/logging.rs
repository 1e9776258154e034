//! Log events to stderr: warnings by default (so that `--device auto` falling back to the
//! CPU says why), vlm's info events with `-v` (load steps and times, first kernel loads),
//! anything `RUST_LOG` asks for instead when it is set (e.g. `RUST_LOG=vlm=debug`,
//! `RUST_LOG=vlm::cache=trace`). Stdout stays the command's output alone.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter without RUST_LOG: warnings from everything, plus vlm's info with `-v`.
fn default_filter(verbose: bool) -> &'static str {
    if verbose {
        "warn,vlm=info"
    } else {
        "warn"
    }
}

/// Installs the stderr subscriber for the rest of the process.
pub fn init(verbose: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!(
                "warning: RUST_LOG={spec:?} is not a log filter ({e}); using {:?} (e.g. RUST_LOG=vlm=debug)",
                default_filter(verbose)
            );
            EnvFilter::new(default_filter(verbose))
        }),
        _ => EnvFilter::new(default_filter(verbose)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
