//! A decode step captured once as a CUDA graph and replayed for the steps after it.
//!
//! At one token per sequence a step is ~470 small launches, and the host, not the GPU,
//! sets the pace (an int4 7B step took 3.9 ms where its weights read in ~1 ms, run 15).
//! Replaying a captured graph issues the whole step in one launch. What changes between
//! steps lives in device buffers written before each replay (token ids, the cache length,
//! the RoPE rows: `decoder/decode_step.rs`); every other address a step touches is fixed
//! for a request: the weights, its KV cache, and the step's temporaries, which the graph
//! owns.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaSlice};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, Device, Result, Tensor};

use super::quant_matvec::pinned_workspace;

pub(super) struct Graph {
    graph: CudaGraph,
    /// Where the graph leaves the step's logits.
    logits: Tensor,
    /// The quantized projections' scratch the graph reads (see quant_matvec.rs).
    _scratch: Option<Arc<CudaSlice<u8>>>,
}

// SAFETY: a graph is owned by one request's decoder state and used by one thread at a
// time (CUDA asks graph objects to be used serialised, not from one thread).
unsafe impl Send for Graph {}

/// Captures what `body` enqueues on `device`'s stream (nothing runs yet) and makes it
/// launchable; the graph copies `body`'s result into `out`. On any error the capture is
/// ended and nothing of it kept.
pub(super) fn capture(
    device: &Device,
    out: Tensor,
    body: impl FnOnce() -> Result<Tensor>,
) -> Result<Graph> {
    let Device::Cuda(dev) = device else {
        bail!("CUDA graphs need a CUDA device");
    };
    let stream = dev.cuda_stream();
    // candle uploads small layout vectors for some kernels; with this guard it reuses the
    // copies made in the eager step before (a capture cannot upload), and fails otherwise.
    let _cached_uploads = dev.enable_cuda_graph_htod_cache();
    let (_, generation) = pinned_workspace();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .w()?;
    // The step's temporaries are dropped inside the closure, so that their frees are part
    // of the graph too and it leaves no allocation behind.
    let copied = body().and_then(|logits| out.slice_set(&logits, 0, 0));
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    if copied.is_err() || ended.is_err() {
        // Frees issued into the failed capture were recorded as errors by cudarc; clear
        // them, or the next call on this context would report them.
        let _ = stream.context().check_err();
    }
    copied?;
    let Some(graph) = ended.w()? else {
        bail!("the decode step captured nothing");
    };
    let (scratch, after) = pinned_workspace();
    if after != generation {
        bail!("the quantized projections' scratch grew during the capture");
    }
    Ok(Graph {
        graph,
        logits: out,
        _scratch: scratch,
    })
}

impl Graph {
    /// Runs the captured step; returns its logits: a copy, or with `copy` off the graph's
    /// own buffer, which the next replay rewrites.
    pub(super) fn replay(&self, copy: bool) -> Result<Tensor> {
        self.graph.launch().w()?;
        if copy {
            self.logits.copy()
        } else {
            Ok(self.logits.clone())
        }
    }
}
