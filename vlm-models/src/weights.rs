//! Small helpers every family's loader uses.

use vlm_contract::Error;

/// A candle error met while reading weights, as the user-facing error.
pub fn weights_err(e: candle_core::Error) -> Error {
    Error::Weights(vlm_contract::error::candle_message(&e))
}

/// Largest size a config.json may set (a width, a count of heads, layers or positions, a
/// vocabulary): 16.7 M, above every real checkpoint (vocabularies of 250 k, contexts of
/// 256 k positions). Sizes multiply into tensor shapes and buffer lengths; past this
/// bound a damaged config would overflow that arithmetic or make the loader allocate
/// more than any machine has, before the weights could disagree with it.
pub const MAX_CONFIG_SIZE: usize = 1 << 24;

/// Refuses a config whose sizes are below their minimum (1 where a layer divides by it or
/// needs at least one) or above [`MAX_CONFIG_SIZE`]. `sizes`: (key as written in the
/// file, value, minimum).
pub fn check_config_sizes(file: &str, sizes: &[(&str, usize, usize)]) -> vlm_contract::Result<()> {
    for &(key, value, min) in sizes {
        if value < min || value > MAX_CONFIG_SIZE {
            return Err(Error::bad_file(
                file,
                format!(
                    "\"{key}\" is {value}, outside {min}..={MAX_CONFIG_SIZE}; the file is damaged or \
                     not this model's config (copy config.json from the original model repo)"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs a reader from a dependency (candle's pickle and GGUF readers), turning its panics
/// into errors: on malformed files they index past short lists, overflow arithmetic or
/// divide by zero, and a damaged model file must be an error the user can act on, not a
/// crash. (Aborts cannot be caught: what would abort is validated before the call.)
pub fn without_panics<T>(read: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        candle_core::bail!("the file is malformed (its reader failed: {what})")
    })
}
