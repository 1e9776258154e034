//! Batch jobs over any Python iterable: `Model.map`, `describe_batch` and `ask_batch`.
//!
//! The Rust API's `generate_each` runs on a thread of its own and pulls the iterable one
//! batch ahead (taking the GIL only to fetch the next item); results come back over a
//! channel in input order. Python waits for them with the GIL released and looks for
//! Ctrl-C while it waits: an interrupt sets the job's `CancelFlag`, which the generation
//! loop checks between decode steps.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyList, PyString};
use vlm_core::{CancelFlag, Error, Generation, GenerationOptions, Request, VisionLanguageModel};

use crate::convert::{image_source, ImageSource};
use crate::errors::{panic_message, to_pyerr, Failure};

/// How often a waiting call looks for Ctrl-C.
pub const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The next message of `rx`, waited for with the GIL released while this thread looks
/// for Ctrl-C every [`SIGNAL_POLL`] and after each message (Python runs signal handlers
/// only on its main thread, between bytecodes, so a thread blocked in Rust would not see
/// one): `Ok(None)` once the
/// sender is gone, `Err` with the handler's exception (KeyboardInterrupt) on an interrupt.
/// The receiver comes back for the next wait.
pub fn recv_or_interrupt<T: Send>(
    py: Python<'_>,
    mut rx: Receiver<T>,
) -> (Receiver<T>, PyResult<Option<T>>) {
    loop {
        let (back, got) = py.detach(move || {
            let got = rx.recv_timeout(SIGNAL_POLL);
            (rx, got)
        });
        rx = back;
        match got {
            Ok(message) => {
                // Results that come faster than SIGNAL_POLL never let the wait time out: a
                // job of many small batches ran to its end past a Ctrl-C (a tiny model's
                // 250 batches in ~10 s).
                if let Err(interrupt) = py.check_signals() {
                    return (rx, Err(interrupt));
                }
                return (rx, Ok(Some(message)));
            }
            Err(RecvTimeoutError::Disconnected) => return (rx, Ok(None)),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    return (rx, Err(interrupt));
                }
            }
        }
    }
}

/// What each item of a batch job is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// An image, described.
    Describe,
    /// An `(image, question)` pair.
    Ask,
}

impl Task {
    pub fn parse(name: &str) -> Option<Task> {
        match name {
            "describe" => Some(Task::Describe),
            "ask" => Some(Task::Ask),
            _ => None,
        }
    }
}

/// What to do with an item that failed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Raise its exception (the job stops).
    Raise,
    /// Put the exception object in its place and go on.
    Return,
}

impl OnError {
    pub fn parse(name: &str) -> Option<OnError> {
        match name {
            "raise" => Some(OnError::Raise),
            "return" => Some(OnError::Return),
            _ => None,
        }
    }
}

// One message per generation, moved once through a channel: boxing the large variant
// would add an allocation per item and save nothing worth it.
#[allow(clippy::large_enum_variant)]
enum Message {
    Result(Result<Generation, Failure>),
    /// The iterable raised (its exception is in `Shared::iterable_error`) or ended.
    Finished,
}

/// Filled by the job's thread, read by Python.
#[derive(Default)]
struct Shared {
    /// The exception the iterable raised, if it did.
    iterable_error: Option<PyErr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Python iterable as the Rust API's request iterator.
struct Items {
    iter: Py<PyIterator>,
    task: Task,
    model: Arc<dyn VisionLanguageModel>,
    options: GenerationOptions,
    shared: Arc<Mutex<Shared>>,
    finished: bool,
}

impl Items {
    /// The next item's image (and question), taken with the GIL; `None` at the end or
    /// when the iterable raised (kept in `shared`).
    fn pull(&mut self) -> Option<Result<(ImageSource, Option<String>), Error>> {
        Python::attach(|py| {
            let item = match self.iter.bind(py).clone().next()? {
                Ok(item) => item,
                Err(e) => {
                    lock(&self.shared).iterable_error = Some(e);
                    return None;
                }
            };
            Some(self.parse(&item).map_err(|e| {
                Error::invalid_option(
                    if self.task == Task::Ask {
                        "items"
                    } else {
                        "images"
                    },
                    e.to_string(),
                )
            }))
        })
    }

    fn parse(&self, item: &Bound<'_, PyAny>) -> PyResult<(ImageSource, Option<String>)> {
        if self.task == Task::Describe {
            return Ok((image_source(item)?, None));
        }
        let pair: (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(
                "each item of ask_batch is an (image, question) pair",
            )
        })?;
        let question: String = pair.1.extract()?;
        Ok((image_source(&pair.0)?, Some(question)))
    }
}

impl Iterator for Items {
    type Item = vlm_core::Result<Request>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let Some(pulled) = self.pull() else {
            self.finished = true;
            return None;
        };
        // Decoding is the slow part: it runs here, without the GIL, on the thread that
        // prepares the next batch while the device runs the current one.
        Some(pulled.and_then(|(source, question)| {
            let image = source.decode()?;
            match question {
                None => self.model.describe_request(&image, &self.options),
                Some(q) => self.model.ask_request(&image, &q, &self.options),
            }
        }))
    }
}

/// A running batch job; results in input order.
pub struct Job {
    // In a Mutex only for `Sync` (pyclasses are shared between threads); one caller at a
    // time takes the receiver out while it waits.
    rx: Mutex<Option<Receiver<Message>>>,
    cancel: CancelFlag,
    shared: Arc<Mutex<Shared>>,
}

impl Job {
    /// Starts the job on its own thread.
    pub fn start(
        py: Python<'_>,
        model: Arc<dyn VisionLanguageModel>,
        items: &Bound<'_, PyAny>,
        task: Task,
        mut options: GenerationOptions,
        batch_size: usize,
    ) -> PyResult<Job> {
        let cancel = CancelFlag::new();
        options.cancel = Some(cancel.clone());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut requests = Items {
            iter: items.try_iter()?.unbind(),
            task,
            model: Arc::clone(&model),
            options,
            shared: Arc::clone(&shared),
            finished: false,
        };
        // Bounded: a consumer slower than the model (a loop that saves each result) holds
        // the job back instead of letting results and pulled items pile up.
        let (tx, rx) = sync_channel(2 * batch_size.max(1));
        let spawned = std::thread::Builder::new()
            .name("vlm-batch".into())
            .spawn(move || {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    model.generate_each(&mut requests, batch_size, &mut |_, result| {
                        // Fails only when Python dropped the job; the results go nowhere then.
                        let _ = tx.send(Message::Result(result.map_err(Failure::from)));
                    });
                }));
                if let Err(payload) = run {
                    let failure = Failure::Panic(panic_message(payload.as_ref()));
                    let _ = tx.send(Message::Result(Err(failure)));
                }
                let _ = tx.send(Message::Finished);
                // The iterator holds Python objects: drop them with the GIL.
                Python::attach(|_| drop(requests));
            });
        if let Err(e) = spawned {
            return Err(to_pyerr(
                py,
                Failure::Vlm(Error::Generation(format!(
                    "cannot start the batch thread: {e}"
                ))),
            ));
        }
        Ok(Job {
            rx: Mutex::new(Some(rx)),
            cancel,
            shared,
        })
    }

    /// The next result, waiting with the GIL released; `Ok(None)` at the end. Ctrl-C
    /// cancels the job and raises KeyboardInterrupt.
    pub fn next(&mut self, py: Python<'_>) -> PyResult<Option<Result<Generation, Failure>>> {
        let Some(rx) = lock(&self.rx).take() else {
            return Ok(None);
        };
        let (rx, got) = recv_or_interrupt(py, rx);
        match got {
            Ok(Some(Message::Result(r))) => {
                *lock(&self.rx) = Some(rx);
                Ok(Some(r))
            }
            Ok(Some(Message::Finished) | None) => Ok(None),
            Err(interrupt) => {
                self.stop();
                Err(interrupt)
            }
        }
    }

    /// The exception the iterable raised, once the job has finished.
    pub fn iterable_error(&self) -> Option<PyErr> {
        lock(&self.shared).iterable_error.take()
    }

    /// Stops the job: the running batch ends at its next decode step, nothing more is
    /// pulled from the iterable.
    pub fn stop(&mut self) {
        self.cancel.cancel();
        *lock(&self.rx) = None;
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `Model.map`'s iterator: each item's result in input order, as its batch finishes.
///
/// With on_error="return" a failed item is its exception object; with "raise" the
/// exception is raised and iteration ends. An exception raised by the iterable itself
/// comes after the results of the items before it.
#[pyclass(module = "vlm", name = "BatchResults")]
pub struct BatchResults {
    job: Job,
    on_error: OnError,
    full: bool,
    done: bool,
}

impl BatchResults {
    pub fn new(job: Job, on_error: OnError, full: bool) -> Self {
        BatchResults {
            job,
            on_error,
            full,
            done: false,
        }
    }
}

/// One result as Python sees it: the text, or the full Generation.
fn result_object(py: Python<'_>, g: Generation, full: bool) -> PyResult<Py<PyAny>> {
    if full {
        Ok(Py::new(py, crate::types::PyGeneration::new(py, g)?)?.into_any())
    } else {
        Ok(PyString::new(py, &g.text).into_any().unbind())
    }
}

#[pymethods]
impl BatchResults {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if self.done {
            return Ok(None);
        }
        match self.job.next(py) {
            Ok(Some(Ok(g))) => result_object(py, g, self.full).map(Some),
            Ok(Some(Err(failure))) => {
                let err = to_pyerr(py, failure);
                match self.on_error {
                    OnError::Return => Ok(Some(err.into_value(py).into_any())),
                    OnError::Raise => {
                        self.done = true;
                        self.job.stop();
                        Err(err)
                    }
                }
            }
            Ok(None) => {
                self.done = true;
                match (self.job.iterable_error(), self.on_error) {
                    (Some(e), OnError::Return) => Ok(Some(e.into_value(py).into_any())),
                    (Some(e), OnError::Raise) => Err(e),
                    (None, _) => Ok(None),
                }
            }
            Err(interrupt) => {
                self.done = true;
                Err(interrupt)
            }
        }
    }

    /// Stops the job; iteration ends.
    fn close(&mut self) {
        self.done = true;
        self.job.stop();
    }
}

/// Runs a job to the end for the list-returning calls; `on_item(n)` after each result.
/// With on_error="raise", the first failure is raised; an exception of the iterable is
/// raised after the rest ran, with the finished results as its `partial_results`.
pub fn collect(
    py: Python<'_>,
    mut job: Job,
    on_error: OnError,
    full: bool,
    on_item: &mut dyn FnMut(Python<'_>) -> PyResult<()>,
) -> PyResult<Vec<Py<PyAny>>> {
    let mut out = Vec::new();
    while let Some(result) = job.next(py)? {
        let obj = match result {
            Ok(g) => result_object(py, g, full)?,
            Err(failure) => {
                let err = to_pyerr(py, failure);
                if on_error == OnError::Raise {
                    job.stop();
                    return Err(err);
                }
                err.into_value(py).into_any()
            }
        };
        out.push(obj);
        on_item(py)?;
    }
    if let Some(e) = job.iterable_error() {
        if on_error == OnError::Return {
            out.push(e.into_value(py).into_any());
        } else {
            let partial = PyList::new(py, out.iter().map(|o| o.clone_ref(py)))?;
            // Best effort: an exception type without a __dict__ keeps only its message.
            let _ = e.value(py).setattr("partial_results", partial);
            return Err(e);
        }
    }
    Ok(out)
}
