//! `vlm.cuda_available()` and `vlm.devices()`: what this build can run on.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::without_gil;

/// Whether this build has CUDA support and the driver sees at least one GPU; when False,
/// device="auto" runs on the CPU (and logs why on the "vlm.device" logger).
#[pyfunction]
pub fn cuda_available(py: Python<'_>) -> PyResult<bool> {
    // Asking the driver initialises CUDA (a fraction of a second): not with the GIL held.
    without_gil(py, || Ok(vlm_core::cuda_available()))
}

/// The devices this build can run on: the CPU first, then every visible CUDA GPU, each a
/// dict {"index", "name", "kind" ("cpu" or "cuda"), "total_memory", "free_memory"
/// (bytes; None when unknown; the host's RAM for the CPU), "compute_capability" ("9.0";
/// None for the CPU)}.
#[pyfunction]
pub fn devices(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let all = without_gil(py, || Ok(vlm_core::devices()))?;
    all.iter()
        .map(|d| {
            let dict = PyDict::new(py);
            dict.set_item("index", d.index)?;
            dict.set_item("name", &d.name)?;
            dict.set_item("kind", d.kind.as_str())?;
            dict.set_item("total_memory", d.total_memory)?;
            dict.set_item("free_memory", d.free_memory)?;
            let cap = d
                .compute_capability
                .map(|(major, minor)| format!("{major}.{minor}"));
            dict.set_item("compute_capability", cap)?;
            Ok(dict)
        })
        .collect()
}
