//! Stopping a running call from another thread (Ctrl-C in Python, a server whose client
//! went away).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag a caller sets to stop calls that carry it
/// ([`crate::GenerationOptions::cancel`]). The generation loop looks at it before the
/// prefill and between decode steps, and batch jobs between batches; a cancelled call
/// returns [`crate::Error::Cancelled`] and the model stays usable for the next call.
///
/// Clones share the flag.
///
/// ```
/// use vlm_contract::CancelFlag;
///
/// let flag = CancelFlag::new();
/// let seen_by_the_worker = flag.clone();
/// assert!(!seen_by_the_worker.is_cancelled());
/// flag.cancel();
/// assert!(seen_by_the_worker.is_cancelled());
/// ```
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every call carrying this flag to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Two flags are equal when they are the same flag (clones of one another).
impl PartialEq for CancelFlag {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for CancelFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelFlag")
            .field(&self.is_cancelled())
            .finish()
    }
}
