//! Small helpers every family's loader uses.

use vlm_contract::Error;

/// A candle error met while reading weights, as the user-facing error.
pub fn weights_err(e: candle_core::Error) -> Error {
    Error::Weights(vlm_contract::error::candle_message(&e))
}
