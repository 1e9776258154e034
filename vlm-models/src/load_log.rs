//! What one load did and how long each step took, for the log (target `vlm::load`) and the
//! progress bar.
//!
//! The weights are read and quantized deep inside every family's layer constructors
//! (`new(cfg, vb)`); rather than thread a handle through all of them, [`LoadLog::start`]
//! puts the current load in a thread-local that the weight backend ([`tensor_read`]) and
//! the quantizer ([`quantized`]) report to. A load runs on one thread (quantization's own
//! worker threads report nothing), and outside a load the reports cost a thread-local
//! look-up and do nothing.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use vlm_contract::ModelInfo;

use crate::progress::Progress;

/// The tracing target of load events.
pub(crate) const TARGET: &str = "vlm::load";

struct Session {
    started: Instant,
    weights_opened: Cell<Option<Instant>>,
    tensors_read: Cell<usize>,
    bytes_read: Cell<u64>,
    read_time: Cell<Duration>,
    layers_quantized: Cell<usize>,
    quantize_time: Cell<Duration>,
    progress: RefCell<Progress>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Session>>> = const { RefCell::new(None) };
}

fn with_current(f: impl FnOnce(&Session)) {
    // `try_with`: a report from a thread-local destructor must not panic.
    let _ = CURRENT.try_with(|current| {
        if let Some(session) = current.borrow().as_ref() {
            f(session);
        }
    });
}

/// The load in progress on this thread; ends (and clears its bar) when dropped.
pub(crate) struct LoadLog {
    session: Rc<Session>,
    previous: Option<Rc<Session>>,
}

impl LoadLog {
    /// Starts timing a load on this thread.
    pub(crate) fn start() -> Self {
        let session = Rc::new(Session {
            started: Instant::now(),
            weights_opened: Cell::new(None),
            tensors_read: Cell::new(0),
            bytes_read: Cell::new(0),
            read_time: Cell::new(Duration::ZERO),
            layers_quantized: Cell::new(0),
            quantize_time: Cell::new(Duration::ZERO),
            progress: RefCell::new(Progress::hidden()),
        });
        let previous = CURRENT.with(|c| c.borrow_mut().replace(session.clone()));
        Self { session, previous }
    }

    /// Logs the summary of a load that succeeded.
    pub(crate) fn finish(self, info: &ModelInfo) {
        let s = &self.session;
        let total = s.started.elapsed();
        let setup = s
            .weights_opened
            .get()
            .map_or(Duration::ZERO, |t| t.duration_since(s.started));
        let read = s.read_time.get();
        let quantize = s.quantize_time.get();
        // What is left: building layers, casts, uploads candle does outside our reads.
        let rest = total.saturating_sub(setup + read + quantize);
        tracing::info!(
            target: TARGET,
            "loaded {} ({}) on {}, {}, quantization {}: {:.2} s in all (config, tokenizer and device {:.2} s, weights read {:.2} s for {} tensors / {:.2} GB, quantization {:.2} s for {} layers, the rest {:.2} s); {:.2} GB of weights held",
            info.model_type,
            info.family,
            info.device,
            info.dtype,
            info.quantization.as_str(),
            total.as_secs_f64(),
            setup.as_secs_f64(),
            read.as_secs_f64(),
            s.tensors_read.get(),
            s.bytes_read.get() as f64 / 1e9,
            quantize.as_secs_f64(),
            s.layers_quantized.get(),
            rest.as_secs_f64(),
            info.weight_bytes as f64 / 1e9,
        );
    }
}

impl Drop for LoadLog {
    fn drop(&mut self) {
        // Clear the bar now: the caller's error message or output comes next.
        *self.session.progress.borrow_mut() = Progress::hidden();
        let previous = self.previous.take();
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = previous);
    }
}

/// The weights are open: config, tokenizer and device are done, and `tensors` tensors
/// (at most) are to be read.
pub(crate) fn weights_opened(tensors: usize) {
    with_current(|s| {
        let now = Instant::now();
        s.weights_opened.set(Some(now));
        tracing::debug!(
            target: TARGET,
            "config, tokenizer and device ready in {:.2} s",
            now.duration_since(s.started).as_secs_f64()
        );
        *s.progress.borrow_mut() = Progress::new("loading", tensors as u64);
    });
}

/// A weight tensor of `bytes` was read in `took` (from the file to the device, cast
/// included).
pub(crate) fn tensor_read(bytes: u64, took: Duration) {
    with_current(|s| {
        s.tensors_read.set(s.tensors_read.get() + 1);
        s.bytes_read.set(s.bytes_read.get() + bytes);
        s.read_time.set(s.read_time.get() + took);
        s.progress.borrow().inc();
    });
}

/// Layer `name` was quantized in `took`.
pub(crate) fn quantized(name: &str, took: Duration) {
    tracing::trace!(target: TARGET, "quantized {name} in {:.3} s", took.as_secs_f64());
    with_current(|s| {
        s.layers_quantized.set(s.layers_quantized.get() + 1);
        s.quantize_time.set(s.quantize_time.get() + took);
        s.progress.borrow().set_message("quantizing");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_reach_only_the_load_in_progress() {
        tensor_read(10, Duration::from_millis(1)); // no load: ignored
        let log = LoadLog::start();
        weights_opened(3);
        tensor_read(100, Duration::from_millis(2));
        tensor_read(50, Duration::from_millis(3));
        quantized(
            "model.layers.0.mlp.up_proj.weight",
            Duration::from_millis(4),
        );
        let s = log.session.clone();
        assert_eq!(s.tensors_read.get(), 2);
        assert_eq!(s.bytes_read.get(), 150);
        assert_eq!(s.read_time.get(), Duration::from_millis(5));
        assert_eq!(s.layers_quantized.get(), 1);
        assert!(s.weights_opened.get().is_some());
        drop(log);
        tensor_read(10, Duration::from_millis(1));
        assert_eq!(s.tensors_read.get(), 2);
        CURRENT.with(|c| assert!(c.borrow().is_none()));
    }
}
