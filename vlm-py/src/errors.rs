//! The exception classes of `vlm`, the mapping from [`vlm_core::Error`] onto them, and
//! [`without_gil`], which runs Rust work with the GIL released and no panic escaping.

use std::any::Any;
use std::ffi::CStr;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use vlm_core::{Error, ErrorKind, ImageError};

/// The hierarchy is written in Python because several classes have two bases (a `vlm`
/// class and the builtin that fits, e.g. `FileNotFoundError`), which pyo3's
/// `create_exception!` cannot express. `vlm/_vlm.pyi` mirrors it; the stub test checks.
const EXCEPTIONS_PY: &CStr = cr#"
class VlmError(Exception):
    """Root of every error vlm raises: ``except vlm.VlmError`` catches them all."""
    __module__ = "vlm"

class InputError(VlmError, ValueError):
    """An argument is wrong: an empty question, an option out of range, a prompt longer
    than the model's context, placeholders that do not match the images."""
    __module__ = "vlm"

class ImageError(InputError):
    """An image could not be read, decoded or accepted (corrupt, unsupported format,
    too many pixels)."""
    __module__ = "vlm"

def _not_found_str(self):
    # errno, strerror and filename are set as for any FileNotFoundError, but the text is
    # vlm's message alone (it names the path and says what to do).
    return self.strerror if self.strerror is not None else FileNotFoundError.__str__(self)

class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path does not exist."""
    __module__ = "vlm"
    __str__ = _not_found_str

class ModelFilesError(VlmError):
    """The model's files are unreadable, inconsistent or of an unsupported model type,
    or the hub download failed."""
    __module__ = "vlm"

class ModelFileNotFoundError(ModelFilesError, FileNotFoundError):
    """The model folder, or a file the model needs, does not exist."""
    __module__ = "vlm"
    __str__ = _not_found_str

class DeviceError(VlmError):
    """The device is not available: CUDA not compiled in or not present, out of memory."""
    __module__ = "vlm"

class CancelledError(VlmError):
    """The call was stopped through its cancellation flag before it finished (Ctrl-C
    raises KeyboardInterrupt instead); the model is unharmed."""
    __module__ = "vlm"

class GenerationError(VlmError):
    """Running a model that loaded fine failed. Internal errors (Rust panics) are raised
    as this class too; they are bugs: please report them."""
    __module__ = "vlm"
"#;

/// Every class [`EXCEPTIONS_PY`] defines, in definition order.
pub const EXCEPTION_NAMES: &[&str] = &[
    "VlmError",
    "InputError",
    "ImageError",
    "ImageNotFoundError",
    "ModelFilesError",
    "ModelFileNotFoundError",
    "DeviceError",
    "CancelledError",
    "GenerationError",
];

/// The namespace the classes were defined in, filled once by [`add_exceptions`].
static EXCEPTIONS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// Defines the exception classes and adds them to `module`.
pub fn add_exceptions(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let namespace = EXCEPTIONS.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let namespace = PyDict::new(py);
        py.run(EXCEPTIONS_PY, Some(&namespace), None)?;
        Ok(namespace.unbind())
    })?;
    for name in EXCEPTION_NAMES {
        if let Some(class) = namespace.bind(py).get_item(name)? {
            module.add(*name, class)?;
        }
    }
    Ok(())
}

fn exception_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let namespace = EXCEPTIONS
        .get(py)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("vlm._vlm was not initialised"))?;
    let class = namespace.bind(py).get_item(name)?.ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("vlm has no exception {name}"))
    })?;
    Ok(class.cast_into::<PyType>()?)
}

/// Why a call into the Rust API failed.
#[derive(Debug)]
pub enum Failure {
    /// The API returned an error.
    Vlm(Error),
    /// Rust code panicked; the payload's message.
    Panic(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Vlm(e)
    }
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        Failure::Vlm(e.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Vlm(e) => e.fmt(f),
            Failure::Panic(message) => write!(
                f,
                "internal error in vlm (a Rust panic: {message}); this is a bug: please report it \
                 at https://github.com/vlm-rs/vlm/issues with the call that caused it"
            ),
        }
    }
}

/// The exception class for `failure`, and the path to put in `filename` for the
/// `FileNotFoundError` subclasses.
fn class_name(failure: &Failure) -> (&'static str, Option<PathBuf>) {
    let error = match failure {
        Failure::Panic(_) => return ("GenerationError", None),
        Failure::Vlm(e) => e,
    };
    match error {
        Error::Image(ImageError::NotFound { path }) => ("ImageNotFoundError", Some(path.clone())),
        Error::Image(_) => ("ImageError", None),
        Error::MissingFile { path, .. } => ("ModelFileNotFoundError", Some(path.clone())),
        other => match other.kind() {
            ErrorKind::BadInput => ("InputError", None),
            ErrorKind::ModelFiles => ("ModelFilesError", None),
            ErrorKind::Device => ("DeviceError", None),
            ErrorKind::Runtime => ("GenerationError", None),
            ErrorKind::Cancelled => ("CancelledError", None),
            // A kind added to vlm-core later still raises a vlm exception.
            _ => ("VlmError", None),
        },
    }
}

/// `errno.ENOENT`: 2 on every platform CPython supports.
const ENOENT: i32 = 2;

/// The Python exception for `failure`; the Rust message is kept as it is.
pub fn to_pyerr(py: Python<'_>, failure: Failure) -> PyErr {
    let (name, filename) = class_name(&failure);
    let build = || -> PyResult<PyErr> {
        let class = exception_class(py, name)?;
        let message = failure.to_string();
        let instance = class.call1((&message,))?;
        if let Some(path) = filename {
            // The attributes of any FileNotFoundError. Set one by one: with ValueError first
            // in the MRO, OSError's (errno, strerror, filename) constructor form is not used.
            instance.setattr("errno", ENOENT)?;
            instance.setattr("strerror", &message)?;
            instance.setattr("filename", path.to_string_lossy())?;
        }
        Ok(PyErr::from_value(instance))
    };
    build().unwrap_or_else(|e| e)
}

/// An `InputError` raised by the bindings themselves (an option the Rust API cannot
/// express), worded as the Rust API words its own option errors.
pub fn invalid_option(py: Python<'_>, name: &'static str, message: impl Into<String>) -> PyErr {
    to_pyerr(py, Failure::Vlm(Error::invalid_option(name, message)))
}

/// Runs `work`, catching a panic as [`Failure::Panic`].
pub fn catch<T>(work: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
    }
}

/// Runs `work` with the GIL released (other Python threads run meanwhile) and turns its
/// error, or its panic, into a Python exception.
pub fn without_gil<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, Failure> + Send,
) -> PyResult<T> {
    py.detach(|| catch(work)).map_err(|f| to_pyerr(py, f))
}

/// Runs `work` on a helper thread with the GIL released while this thread watches for
/// Ctrl-C ([`crate::batch::recv_or_interrupt`]). On an interrupt (any exception a signal
/// handler raises) `cancel` is set, the work stops at its next check (between decode
/// steps), and the handler's exception is raised; the model stays usable.
pub fn interruptible<T: Send>(
    py: Python<'_>,
    cancel: Option<&vlm_core::CancelFlag>,
    work: impl FnOnce() -> Result<T, Failure> + Send,
) -> PyResult<T> {
    let Some(cancel) = cancel else {
        return without_gil(py, work);
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("vlm-call".into())
            .spawn_scoped(scope, move || {
                // Fails only if this call already returned; nobody waits then.
                let _ = tx.send(catch(work));
            });
        if let Err(e) = spawned {
            let message = format!("cannot start a thread for the call: {e}");
            return Err(to_pyerr(py, Failure::Vlm(Error::Generation(message))));
        }
        let (rx, got) = crate::batch::recv_or_interrupt(py, rx);
        match got {
            Ok(Some(result)) => result.map_err(|f| to_pyerr(py, f)),
            Ok(None) => {
                let message = "the call's thread ended without a result".to_string();
                Err(to_pyerr(py, Failure::Panic(message)))
            }
            Err(interrupt) => {
                cancel.cancel();
                // Wait for the work to stop, so nothing of this call outlives it.
                let _ = py.detach(move || rx.recv());
                Err(interrupt)
            }
        }
    })
}

/// The text of a panic payload (`panic!` with a literal gives `&str`, with a format
/// string `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}
