//! Small helpers every family's loader uses.

use std::path::PathBuf;

use vlm_core::{Error, Result};

/// A candle error met while reading weights, as the user-facing error.
pub fn weights_err(e: candle_core::Error) -> Error {
    Error::Weights(vlm_core::error::candle_message(&e))
}

/// Parameters stored in safetensors `files` (read from their headers only).
pub fn count_parameters(files: &[PathBuf]) -> Result<u64> {
    let mut total = 0u64;
    for f in files {
        // SAFETY: read-only mapping of a weights file, only its header is read here.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
            .map_err(|e| Error::bad_file(f, e))?;
        for (_, view) in st.tensors() {
            total += view.shape().iter().product::<usize>() as u64;
        }
    }
    Ok(total)
}
