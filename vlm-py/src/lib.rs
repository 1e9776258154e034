//! # vlm-py
//!
//! The native module `vlm._vlm` behind the Python package `vlm` (python/vlm/__init__.py
//! re-exports it). Thin by design (docs/architecture.md, "The boundary with Python is
//! thin"): it turns Python values into Rust values, releases the GIL, calls
//! `vlm_core`, and maps errors onto exception classes.
//!
//! PIL images and numpy arrays are converted to RGB bytes by the pure-Python helper
//! `vlm/_images.py`, so neither library is needed to build or import `vlm`.

mod batch;
mod compare;
mod convert;
mod devices;
mod errors;
mod model;
mod stream;
mod types;

use pyo3::prelude::*;

/// Native half of the vlm package; use `import vlm`, not this module.
#[pymodule]
fn _vlm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust log records (vlm's tracing events arrive as such) go to Python's `logging`,
    // under loggers named after their target: "vlm.load", "vlm.device", "vlm.kernels".
    // Levels are not cached, so `logging.getLogger("vlm").setLevel(...)` takes effect at
    // once. Trace events (per layer, per request) stay in Rust: each record that passes
    // this filter takes the GIL. A second module in the process may already have
    // installed a logger: keep it.
    if let Ok(logger) = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::Loggers) {
        let _ = logger.filter(log::LevelFilter::Debug).install();
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(devices::cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(devices::devices, m)?)?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(compare::compare, m)?)?;
    m.add_function(wrap_pyfunction!(model::save_quantized, m)?)?;
    m.add_function(wrap_pyfunction!(model::supported_model_types, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<stream::TextStream>()?;
    m.add_class::<batch::BatchResults>()?;
    m.add_class::<types::PyGeneration>()?;
    m.add_class::<types::PyTimings>()?;
    errors::add_exceptions(m)?;
    Ok(())
}
