//! [`TextStream`]: generation on a Rust thread, text pieces handed to Python over a
//! channel. Waiting for the next piece releases the GIL.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;
use vlm_core::{Generation, VisionLanguageModel};

use crate::errors::{panic_message, to_pyerr, Failure};
use crate::types::PyGeneration;

enum Event {
    Text(String),
    Done(Result<Generation, Failure>),
}

/// Unwinds the generating thread when Python has dropped or closed the stream. The
/// `on_text` callback of the Rust API cannot ask generation to stop, so without this a
/// stream abandoned after the first piece would run to `max_new_tokens` in the background.
struct Cancelled;

/// Work run on the stream's thread: the model and the text callback in, the generation out.
pub type StreamJob = Box<
    dyn FnOnce(&dyn VisionLanguageModel, &mut dyn FnMut(&str)) -> vlm_core::Result<Generation>
        + Send,
>;

/// An iterator over the pieces of text a model generates, as they are made.
///
/// `result` holds the full Generation once the iterator is exhausted. Dropping the stream,
/// or calling close(), stops the generation at its next piece.
#[pyclass(frozen, module = "vlm", name = "TextStream")]
pub struct TextStream {
    events: Mutex<Option<Receiver<Event>>>,
    result: Mutex<Option<Py<PyGeneration>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TextStream {
    /// Starts `job` on its own thread.
    pub fn start(
        py: Python<'_>,
        model: Arc<dyn VisionLanguageModel>,
        job: StreamJob,
    ) -> PyResult<Self> {
        let (tx, rx) = channel();
        let spawned = std::thread::Builder::new()
            .name("vlm-stream".into())
            .spawn(move || {
                let pieces = tx.clone();
                let mut on_text = move |piece: &str| {
                    if pieces.send(Event::Text(piece.to_string())).is_err() {
                        resume_unwind(Box::new(Cancelled));
                    }
                };
                let event = match catch_unwind(AssertUnwindSafe(|| job(&*model, &mut on_text))) {
                    Ok(result) => Event::Done(result.map_err(Failure::from)),
                    Err(payload) if payload.is::<Cancelled>() => return,
                    Err(payload) => Event::Done(Err(Failure::Panic(panic_message(&*payload)))),
                };
                // Fails only when the stream was dropped meanwhile; nobody is waiting then.
                let _ = tx.send(event);
            });
        if let Err(e) = spawned {
            return Err(to_pyerr(
                py,
                Failure::Vlm(vlm_core::Error::Generation(format!(
                    "cannot start the streaming thread: {e}"
                ))),
            ));
        }
        Ok(TextStream {
            events: Mutex::new(Some(rx)),
            result: Mutex::new(None),
        })
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let event = py.detach(|| lock(&self.events).as_ref().map(|rx| rx.recv()));
        match event {
            // Finished or closed.
            None => Ok(None),
            Some(Ok(Event::Text(piece))) => Ok(Some(piece)),
            Some(Ok(Event::Done(Ok(generation)))) => {
                *lock(&self.result) = Some(Py::new(py, PyGeneration::new(py, generation)?)?);
                self.close(py);
                Ok(None)
            }
            Some(Ok(Event::Done(Err(failure)))) => {
                self.close(py);
                Err(to_pyerr(py, failure))
            }
            // The thread ended without a result: only after close().
            Some(Err(_)) => {
                self.close(py);
                Ok(None)
            }
        }
    }

    /// The full Generation once the stream is exhausted; None before, or after close().
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<PyGeneration>> {
        lock(&self.result).as_ref().map(|g| g.clone_ref(py))
    }

    /// Stops generating; iteration ends. Also happens when the stream is garbage collected.
    fn close(&self, py: Python<'_>) {
        // Another thread may hold the lock while it waits for the next piece.
        py.detach(|| lock(&self.events).take());
    }

    fn __repr__(&self) -> String {
        let state = if lock(&self.result).is_some() {
            "finished"
        } else if self.events.try_lock().map_or(true, |e| e.is_some()) {
            "running"
        } else {
            "closed"
        };
        format!("<vlm.TextStream {state}>")
    }
}
