//! The decode step: one new token per sequence. On CUDA through the fused kernels
//! (crate::kernels), and from the third step of a request on as a replayed CUDA graph
//! (kernels/graph.rs); elsewhere through the unfused layers, which define what the
//! kernels compute.

use candle_core::{DType, Device, Result, Tensor};

use super::attention::Masking;
use super::kv_cache::LayerKvCache;
use super::model::Decoder;
use super::state::DecoderState;
use crate::kernels::{self, CacheLen, StepGraph, StepUploads, UploadCache, UploadValues};
use crate::layers::{attention_mask, AddNorm};

/// What a fused decode step reads from the device, written before each step, and the step
/// captured as a CUDA graph once one eager step has run (kernels/graph.rs): every step of
/// a request then has the same addresses, only these buffers' contents change.
pub(super) struct FusedStep {
    /// `[batch + 1]` u32: the token ids, then the caches' length after the step.
    ids_len: Tensor,
    /// `[2, batch, 1, head_dim / 2]` in the model dtype: the cos rows, then the sin rows.
    rope: Tensor,
    /// How the two above are written before each step.
    uploads: StepUploads,
    /// Shape and dtype of the eager steps' logits (the graph's output buffer).
    logits: Option<(Vec<usize>, DType)>,
    graph: Option<StepGraph>,
    /// A capture failed: this request goes on without a graph.
    no_graph: bool,
}

impl FusedStep {
    fn new(batch: usize, half: usize, dtype: DType, device: &Device) -> Result<Self> {
        let bytes = 4 * (batch + 1) + 2 * batch * half * dtype.size_in_bytes();
        Ok(Self {
            ids_len: Tensor::zeros(batch + 1, DType::U32, device)?,
            rope: Tensor::zeros((2, batch, 1, half), dtype, device)?,
            uploads: StepUploads::new(device, bytes)?,
            logits: None,
            graph: None,
            no_graph: false,
        })
    }
}

/// Where a graph step's token ids come from.
pub(super) enum StepIds<'a> {
    /// Uploaded from the host, one per sequence.
    Host(&'a [u32]),
    /// Already in the step's ids buffer ([`FusedStep::ids`]), written by the device.
    OnDevice,
}

impl FusedStep {
    /// Whether the step has been captured as a graph (and a capture has not failed).
    pub(super) fn has_graph(&self) -> bool {
        self.graph.is_some() && !self.no_graph
    }

    /// The `[batch]` u32 token ids the step reads.
    pub(super) fn ids(&self) -> Result<Tensor> {
        let b = self.ids_len.elem_count() - 1;
        self.ids_len.narrow(0, 0, b)
    }
}

impl Decoder {
    /// One decode step: the last token of each sequence in, `[batch, vocab]` logits out.
    pub fn decode_step(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        let (dtype, device) = (self.dtype, &self.device);
        if self.graph_steps(tokens.len()) {
            let logits = self.graph_decode_step(StepIds::Host(tokens), state, true)?;
            for p in state.next_position.iter_mut() {
                *p += 1;
            }
            return Ok(logits);
        }
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), device)?;
        let embeds = self.embed(&ids)?.unsqueeze(1)?;
        let (cos, sin) = self.rope.step_tables(&state.next_position, dtype, device)?;
        let kv_len = state.caches.first().map_or(0, |c| c.len()) + 1;
        let logits = if self.fused_decode {
            let pad = state.pad_on_device(device)?;
            let len = CacheLen {
                on_device: None,
                value: kv_len,
            };
            self.fused_step_logits(&embeds, &cos, &sin, pad.as_ref(), len, &mut state.caches)?
        } else {
            let mask = attention_mask(&self.runtime, &state.pad, 1, kv_len, dtype, device)?;
            let masking = Masking::Additive(mask.as_ref());
            let hidden = self.run_layers(embeds, &cos, &sin, masking, &mut state.caches, None)?;
            self.logits(&hidden.squeeze(1)?)?
        };
        for p in state.next_position.iter_mut() {
            *p += 1;
        }
        Ok(logits)
    }

    /// The input buffers of fused steps over `batch` sequences.
    pub(super) fn new_fused_step(&self, batch: usize) -> Result<FusedStep> {
        FusedStep::new(batch, self.cfg.head_dim / 2, self.dtype, &self.device)
    }

    /// Whether steps of `batch` sequences go through the fused kernels as a captured CUDA
    /// graph ([`Self::graph_decode_step`]).
    pub(super) fn graph_steps(&self, batch: usize) -> bool {
        // Quantized projections of more than 8 rows go through candle's matmul, whose
        // scratch a graph must not hold (kernels::note_shared_quant_scratch).
        let first = self.layers.first();
        let quantized = first.is_some_and(|l| l.is_quantized());
        // Projections that dequantize their weights on every step (candle's kernels off
        // or not running on this card) are not captured either: each graph would keep a
        // dequantized copy of the largest weight (2B int4 on an H200: 4.8 GB held after
        // the runs instead of 2.1) and hold cuBLAS calls, whose capture failed beside other
        // threads' work (run 36).
        let dequantizes = first.is_some_and(|l| l.dequantizes());
        self.fused_decode
            && kernels::graphs_enabled(&self.runtime, &self.device)
            && !dequantizes
            && !(quantized && batch > kernels::QUANT_MATVEC_ROWS)
    }

    /// The layers, final norm and LM head of a step through the fused kernels, `[b, 1,
    /// hidden]` embeddings in, `[b, vocab]` logits out: each residual add runs in the
    /// launch of the norm after it, which hands a quantized projection its input already
    /// quantized (DecoderLayer::forward); with `RuntimeOptions::fused_norms`
    /// off, in launches of their own.
    fn fused_step_logits(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        pad: Option<&Tensor>,
        len: CacheLen<'_>,
        caches: &mut [LayerKvCache],
    ) -> Result<Tensor> {
        if !self.runtime.fused_norms {
            let masking = Masking::FusedDecode { pad, len };
            let hidden = self.run_layers(embeds.clone(), cos, sin, masking, caches, None)?;
            return self.logits(&hidden.squeeze(1)?);
        }
        let masking = Masking::FusedDecode { pad, len };
        let (x, delta) = self.run_layers_deferred(
            embeds.clone(),
            cos,
            sin,
            masking,
            caches,
            None,
            AddNorm::Step,
        )?;
        let x = x.squeeze(1)?;
        let delta = delta.map(|d| d.squeeze(1)).transpose()?;
        let (_, hidden, q8) = kernels::add_rms_norm(
            &x,
            delta.as_ref(),
            self.norm.head_norm(),
            self.lm_head.takes_q8(),
        )?;
        self.lm_head.forward_q8(&hidden, q8.as_ref())
    }

    /// A fused step for CUDA graphs (on unless `VLM_CUDA_GRAPH=0`): its inputs written to the step's
    /// device buffers, then the step run eagerly (the first), captured as a graph (the
    /// second) or replayed (the rest).
    ///
    /// With `copy_logits` off, a replay returns the graph's own logits buffer, which the
    /// next replay overwrites: for a caller that has queued all its reads of them by then.
    pub(super) fn graph_decode_step(
        &self,
        ids: StepIds<'_>,
        state: &mut DecoderState,
        copy_logits: bool,
    ) -> Result<Tensor> {
        let device = &self.device;
        let b = state.next_position.len();
        let pad = state.pad_on_device(device)?;
        let DecoderState {
            caches,
            next_position,
            step,
            ..
        } = state;
        let len = caches.first().map_or(0, |c| c.len()) + 1;
        let step = match step {
            Some(s) => s,
            None => step.insert(self.new_fused_step(b)?),
        };
        let started = std::time::Instant::now();
        let (cos, sin) = self.rope.step_rows(next_position);
        let rope = [cos, sin].concat();
        let (target, ids_len) = match ids {
            StepIds::Host(tokens) => {
                if tokens.len() != b {
                    candle_core::bail!("{} token ids for {b} sequences", tokens.len());
                }
                let mut ids_len = tokens.to_vec();
                ids_len.push(len as u32);
                (step.ids_len.clone(), ids_len)
            }
            // The ids are the device's own pick, already in place: the length alone.
            StepIds::OnDevice => (step.ids_len.narrow(0, b, 1)?, vec![len as u32]),
        };
        step.uploads.upload(&[
            (&target, UploadValues::U32(&ids_len)),
            (&step.rope, UploadValues::F32(&rope)),
        ])?;

        if let Some(graph) = &step.graph {
            let uploaded = started.elapsed();
            // The graph writes each cache's next position; the host keeps the count.
            for cache in caches.iter_mut() {
                cache
                    .claim(1)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            }
            let logits = graph.replay(copy_logits)?;
            tracing::trace!(
                target: "vlm::decode_host",
                "graph step: {} µs uploading ids, length and rope rows, {} µs in all with the replay and the logits' copy",
                uploaded.as_micros(),
                started.elapsed().as_micros()
            );
            return Ok(logits);
        }
        let ids = step.ids_len.narrow(0, 0, b)?;
        let len_t = step.ids_len.narrow(0, b, 1)?;
        let (cos, sin) = (step.rope.get(0)?, step.rope.get(1)?);
        let body = |caches: &mut [LayerKvCache]| -> Result<Tensor> {
            let embeds = self.embed(&ids)?.unsqueeze(1)?;
            let len = CacheLen {
                on_device: Some(&len_t),
                value: len,
            };
            self.fused_step_logits(&embeds, &cos, &sin, pad.as_ref(), len, caches)
        };
        if let (false, Some((dims, dtype))) = (step.no_graph, &step.logits) {
            let out = Tensor::zeros(dims.as_slice(), *dtype, device)?;
            match StepGraph::capture(device, out, || body(caches)) {
                Ok(graph) => {
                    let logits = graph.replay(copy_logits)?;
                    step.graph = Some(graph);
                    return Ok(logits);
                }
                Err(_) => {
                    // Nothing ran: forget what the capture claimed and run it eagerly.
                    for cache in caches.iter_mut() {
                        cache.truncate(len - 1);
                    }
                    step.no_graph = true;
                }
            }
        }
        // The eager step before a capture keeps candle's small uploads for it.
        let _uploads = (!step.no_graph).then(|| UploadCache::new(device));
        let logits = body(caches)?;
        step.logits = Some((logits.dims().to_vec(), logits.dtype()));
        Ok(logits)
    }
}
