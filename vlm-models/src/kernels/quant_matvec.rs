//! Quantized projections of a decode step (≤ 8 rows) through candle's MMVQ kernels (Q4_K
//! and Q6_K weights through ours, quant_matvec.cu), with the Q8_1 scratch for the
//! activations owned by the calling thread.
//!
//! candle's own path keeps one scratch per device behind a process-wide mutex and grows it
//! by replacing it: a decode step captured in a CUDA graph would keep the old address after
//! another thread's longer prompt grew it, and two threads' streams share it unordered. A
//! scratch per thread is ordered by that thread's stream, and a graph holds an `Arc` of the
//! one it was captured with ([`pinned_workspace`]), so it outlives any growth.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use candle_core::cuda_backend::kernels::ffi;
use candle_core::cuda_backend::DeviceId;
use candle_core::quantized::cuda::MATRIX_ROW_PADDING;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Result, Shape, Tensor};

/// Rows a call takes (the MMVQ kernels' limit).
const MAX_ROWS: usize = super::QUANT_MATVEC_ROWS;
/// Q8_1 block: 32 values, two halves (scale, sum) and 32 bytes.
const Q8_1_VALUES: usize = 32;
const Q8_1_BYTES: usize = 36;

struct Workspace {
    device: DeviceId,
    slice: Arc<CudaSlice<u8>>,
    /// Bumped whenever the scratch is replaced by a larger one.
    generation: u64,
}

thread_local! {
    static WORKSPACE: RefCell<Option<Workspace>> = const { RefCell::new(None) };
}

/// The calling thread's scratch on `dev`, at least `bytes` long.
fn workspace(dev: &candle_core::CudaDevice, bytes: usize) -> Result<Arc<CudaSlice<u8>>> {
    WORKSPACE.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(ws) = w
            .as_ref()
            .filter(|ws| ws.device == dev.id() && ws.slice.len() >= bytes)
        {
            return Ok(ws.slice.clone());
        }
        let generation = w.as_ref().map_or(0, |ws| ws.generation + 1);
        // Grown in steps, so that the few sizes of one model settle it at once.
        let bytes = bytes.next_power_of_two().max(64 * 1024);
        // SAFETY: the quantize kernel writes every byte a matmul reads.
        let slice = Arc::new(unsafe { dev.alloc::<u8>(bytes)? });
        *w = Some(Workspace {
            device: dev.id(),
            slice: slice.clone(),
            generation,
        });
        Ok(slice)
    })
}

/// The calling thread's scratch and how often it has been replaced: a CUDA graph captured
/// between two equal generations holds the scratch's address and keeps it alive.
pub(super) fn pinned_workspace() -> (Option<Arc<CudaSlice<u8>>>, u64) {
    WORKSPACE.with(|w| {
        w.borrow()
            .as_ref()
            .map_or((None, 0), |ws| (Some(ws.slice.clone()), ws.generation))
    })
}

type Launcher = unsafe extern "C" fn(
    *const c_void,
    *const c_void,
    *mut c_void,
    i32,
    i32,
    i32,
    i32,
    i32,
    *mut c_void,
);
type Quantizer = unsafe extern "C" fn(*const c_void, *mut c_void, i32, i32, i32, *mut c_void);

fn kernels(w: GgmlDType, x: DType) -> Option<(Quantizer, Launcher)> {
    use GgmlDType as G;
    Some(match x {
        DType::BF16 => (
            ffi::launch_mmvq_gguf_quantize_q8_1_bf16 as Quantizer,
            match w {
                G::Q4_0 => ffi::launch_mmvq_gguf_q4_0_bf16_plain as Launcher,
                G::Q8_0 => ffi::launch_mmvq_gguf_q8_0_bf16_plain,
                G::Q4K => ffi::launch_mmvq_gguf_q4_k_bf16_plain,
                G::Q5K => ffi::launch_mmvq_gguf_q5_k_bf16_plain,
                G::Q6K => ffi::launch_mmvq_gguf_q6_k_bf16_plain,
                _ => return None,
            },
        ),
        DType::F16 => (
            ffi::launch_mmvq_gguf_quantize_q8_1_f16 as Quantizer,
            match w {
                G::Q4_0 => ffi::launch_mmvq_gguf_q4_0_f16_plain as Launcher,
                G::Q8_0 => ffi::launch_mmvq_gguf_q8_0_f16_plain,
                G::Q4K => ffi::launch_mmvq_gguf_q4_k_f16_plain,
                G::Q5K => ffi::launch_mmvq_gguf_q5_k_f16_plain,
                G::Q6K => ffi::launch_mmvq_gguf_q6_k_f16_plain,
                _ => return None,
            },
        ),
        DType::F32 => (
            ffi::launch_mmvq_gguf_quantize_q8_1_f32 as Quantizer,
            match w {
                G::Q4_0 => ffi::launch_mmvq_gguf_q4_0_f32_plain as Launcher,
                G::Q8_0 => ffi::launch_mmvq_gguf_q8_0_f32_plain,
                G::Q4K => ffi::launch_mmvq_gguf_q4_k_f32_plain,
                G::Q5K => ffi::launch_mmvq_gguf_q5_k_f32_plain,
                G::Q6K => ffi::launch_mmvq_gguf_q6_k_f32_plain,
                _ => return None,
            },
        ),
        _ => return None,
    })
}

/// Whether [`matvec`] takes `x [.., k]` against `w`: on CUDA, ≤ 8 rows, a block type and
/// activation dtype these kernels have.
pub(super) fn applies(x: &Tensor, w: &QTensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    x.device().is_cuda()
        && (1..=MAX_ROWS).contains(&rows)
        && w.shape()
            .dims2()
            .is_ok_and(|(_, k)| x.dims().last() == Some(&k))
        && has_kernels(w, x.dtype())
}

/// Whether these kernels take `w` against activations in `dtype`.
pub(super) fn has_kernels(w: &QTensor, dtype: DType) -> bool {
    kernels(w.dtype(), dtype).is_some()
}

/// Activations of a decode step's quantized projection already in Q8_1 blocks in the
/// calling thread's scratch, written there by a fused kernel (the residual norm's or the
/// MLP product's) instead of a quantize launch of their own. Read by the next
/// [`matvec_q8`]: nothing in between may quantize into the scratch.
pub struct Q8Activations {
    /// Holds the scratch the blocks were written to, should the thread's grow meanwhile.
    scratch: Arc<CudaSlice<u8>>,
    device: candle_core::Device,
    /// The activations' shape (`[.., k]`) and dtype, which the output keeps.
    dims: Vec<usize>,
    dtype: DType,
}

impl Q8Activations {
    /// Room in the calling thread's scratch for `x`'s values (`[.., k]`, ≤ 8 rows) as
    /// Q8_1 blocks, for a kernel to write; `None` past the matvec's rows.
    pub(super) fn for_values(
        device: &candle_core::Device,
        dims: &[usize],
        dtype: DType,
    ) -> Result<Option<Self>> {
        let candle_core::Device::Cuda(dev) = device else {
            return Ok(None);
        };
        let k = dims.last().copied().unwrap_or(0);
        let rows = dims.iter().product::<usize>() / k.max(1);
        if k == 0 || !(1..=MAX_ROWS).contains(&rows) {
            return Ok(None);
        }
        let blocks = rows * padded(k) / Q8_1_VALUES;
        let scratch = workspace(dev, blocks * Q8_1_BYTES)?;
        Ok(Some(Self {
            scratch,
            device: device.clone(),
            dims: dims.to_vec(),
            dtype,
        }))
    }

    /// Values per row in the blocks: k padded as candle pads quantized rows.
    pub(super) fn padded_k(&self) -> usize {
        padded(self.k())
    }

    fn k(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    fn rows(&self) -> usize {
        self.dims.iter().product::<usize>() / self.k().max(1)
    }

    /// Runs `launch` with the blocks' device address, for the kernel that writes them on
    /// `stream` (the thread's).
    pub(super) fn with_address<R>(&self, stream: &CudaStream, launch: impl FnOnce(u64) -> R) -> R {
        let (ptr, _sync) = self.scratch.device_ptr(stream);
        launch(ptr)
    }

    /// Whether [`matvec_q8`] takes these activations against `w`.
    pub(super) fn fits(&self, w: &QTensor) -> bool {
        w.shape().dims2().is_ok_and(|(_, k)| k == self.k()) && has_kernels(w, self.dtype)
    }
}

fn padded(k: usize) -> usize {
    k.div_ceil(MATRIX_ROW_PADDING) * MATRIX_ROW_PADDING
}

/// `x Wᵀ` for `x [.., k]` (≤ 8 rows, see [`applies`]) → `[.., n]` in `x`'s dtype.
pub(super) fn matvec(x: &Tensor, w: &QTensor) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let dims = x.dims();
    let rows = x.elem_count() / k.max(1);
    let Some((quantize, launch)) = kernels(w.dtype(), x.dtype()) else {
        bail!(
            "no MMVQ kernel for {:?} weights and {:?} activations",
            w.dtype(),
            x.dtype()
        );
    };
    if dims.last() != Some(&k) || !(1..=MAX_ROWS).contains(&rows) {
        bail!("quantized matvec: x {:?} against [{n}, {k}]", x.shape());
    }
    let x = x.contiguous()?;
    let Some(q8) = Q8Activations::for_values(x.device(), dims, x.dtype())? else {
        bail!("the quantized matvec runs on CUDA tensors only");
    };
    let scratch = q8.scratch.clone();
    super::cuda::with_addresses(&[Some(&x)], |dev, p| {
        let stream = dev.cuda_stream();
        let (scratch_ptr, _sync) = scratch.device_ptr(&stream);
        // SAFETY: `x` is a live contiguous device buffer of rows × k values and the
        // scratch holds rows × padded k Q8_1 values; ordered on this thread's stream, the
        // scratch being this thread's.
        unsafe {
            quantize(
                p[0] as *const c_void,
                scratch_ptr as *mut c_void,
                k as i32,
                padded(k) as i32,
                rows as i32,
                stream.cu_stream() as *mut c_void,
            );
        }
        Ok(())
    })?;
    run(&q8, w, launch)
}

/// `x Wᵀ` from activations a fused kernel has quantized ([`Q8Activations`]) → `[.., n]`
/// in their dtype.
pub(super) fn matvec_q8(q8: &Q8Activations, w: &QTensor) -> Result<Tensor> {
    let Some((_, launch)) = kernels(w.dtype(), q8.dtype) else {
        bail!(
            "no MMVQ kernel for {:?} weights and {:?} activations",
            w.dtype(),
            q8.dtype
        );
    };
    if !q8.fits(w) {
        bail!(
            "quantized matvec: activations {:?} against {:?}",
            q8.dims,
            w.shape()
        );
    }
    run(q8, w, launch)
}

/// The MMVQ launch over `q8`'s blocks.
fn run(q8: &Q8Activations, w: &QTensor, launch: Launcher) -> Result<Tensor> {
    let (n, k) = w.shape().dims2()?;
    let rows = q8.rows();
    let blocks_per_row = padded(k) / Q8_1_VALUES;
    // `dims` ends in k: keep the leading dims, k becomes n.
    let out_dims: Vec<usize> = q8.dims[..q8.dims.len() - 1]
        .iter()
        .copied()
        .chain([n])
        .collect();
    let out = super::cuda::empty_on(&q8.device, q8.dtype, Shape::from_dims(&out_dims))?;
    super::cuda::with_addresses(&[Some(&out)], |dev, p| {
        let stream = dev.cuda_stream();
        let (scratch_ptr, _sync) = q8.scratch.device_ptr(&stream);
        let address = w.device_ptr()? as u64;
        if let Some(block) = super::cuda::own_matvec(w, address) {
            // Ours: a warp per output row (quant_matvec.cu says why).
            return super::cuda::matvec_quant(
                dev,
                block,
                (address, scratch_ptr, p[0]),
                (rows, n, k, blocks_per_row),
                q8.dtype,
            );
        }
        let weights = address as *const c_void;
        // SAFETY: the pointers are live device buffers of the sizes computed above (the
        // weights as candle stores them, padded rows included); ordered on this thread's
        // stream after the launch that wrote the blocks.
        unsafe {
            launch(
                weights,
                scratch_ptr as *const c_void,
                p[0] as *mut c_void,
                k as i32,
                n as i32,
                blocks_per_row as i32,
                n as i32,
                rows as i32,
                stream.cu_stream() as *mut c_void,
            );
        }
        Ok(())
    })?;
    Ok(out)
}
