//! Launching the kernels of `decode.cu`, `vision.cu` and `ops.cu`: device addresses of contiguous tensors, read
//! under their storage locks, passed as raw pointers (the kernels take several inputs and
//! write the KV cache in place, which candle's custom-op traits do not express).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaStream, DevicePtr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result, Shape, Storage, Tensor};

use super::early_launch;
use super::{CacheLen, HeadNorm, Heads, NewKv};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
const MODULE: &str = "vlm_decode";
const VISION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/vision.ptx"));
const VISION_MODULE: &str = "vlm_vision";
const OPS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
const OPS_MODULE: &str = "vlm_ops";
const DEQUANT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dequant.ptx"));
const DEQUANT_MODULE: &str = "vlm_dequant";
const QUANT_MATVEC_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/quant_matvec.ptx"));
const QUANT_MATVEC_MODULE: &str = "vlm_quant_matvec";
#[cfg(vlm_flash)]
const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
#[cfg(vlm_flash)]
const ATTENTION_MODULE: &str = "vlm_attention";
#[cfg(vlm_flash)]
const MMA_GEMV_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/mma_gemv.ptx"));
#[cfg(vlm_flash)]
const MMA_GEMV_MODULE: &str = "vlm_mma_gemv";
#[cfg(vlm_flash)]
const DECODE_MMA_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_mma.ptx"));
#[cfg(vlm_flash)]
const DECODE_MMA: (&str, &str) = ("vlm_decode_mma", DECODE_MMA_PTX);
/// Never loaded: `mma_decode_applies` holds only in builds with the tensor-core kernels.
#[cfg(not(vlm_flash))]
const DECODE_MMA: (&str, &str) = ("vlm_decode_mma", "");

/// `dev.get_or_load_custom_func(name, module, ptx)?`, logging the first load of each of our
/// modules on each device (see [`note_first_load`]). A macro because candle does not export
/// the function type it returns.
macro_rules! custom_func {
    ($dev:expr, $name:expr, $module:expr, $ptx:expr) => {{
        let dev: &CudaDevice = $dev;
        let started = std::time::Instant::now();
        let func = dev.get_or_load_custom_func($name, $module, $ptx)?;
        note_first_load(dev, $module, started);
        func
    }};
}

/// Logs (target `vlm::kernels`, info) the first time `module` was loaded on `dev`: the
/// driver JIT-compiles our PTX for the card then, which took 22 s on a fresh machine and
/// otherwise looks like a hung first request. Later processes hit the driver's compute
/// cache.
fn note_first_load(dev: &CudaDevice, module: &'static str, started: std::time::Instant) {
    static LOADED: std::sync::Mutex<Vec<(candle_core::cuda_backend::DeviceId, &str)>> =
        std::sync::Mutex::new(Vec::new());
    let key = (dev.id(), module);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if loaded.contains(&key) {
        return;
    }
    loaded.push(key);
    drop(loaded);
    use candle_core::backend::BackendDevice;
    let location = match dev.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    };
    tracing::info!(
        target: "vlm::kernels",
        "loaded vlm's {module} CUDA kernels on {location} in {:.2} s (the first load in a process has the driver JIT-compile their PTX for this GPU, 22 s on a fresh machine; later ones come from its compute cache, ~/.nv/ComputeCache)",
        started.elapsed().as_secs_f64()
    );
}

pub(super) fn suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        d => bail!("the fused decode kernels take f32, bf16 or f16, not {d:?}"),
    })
}

fn address<'a>(
    s: &'a CudaStorage,
    offset: usize,
    stream: &'a CudaStream,
) -> Result<(u64, SyncOnDrop<'a>)> {
    let (ptr, sync, size) = match s.dtype() {
        DType::F32 => {
            let (p, g) = s.as_cuda_slice::<f32>()?.device_ptr(stream);
            (p, g, 4)
        }
        DType::BF16 => {
            let (p, g) = s.as_cuda_slice::<half::bf16>()?.device_ptr(stream);
            (p, g, 2)
        }
        DType::F16 => {
            let (p, g) = s.as_cuda_slice::<half::f16>()?.device_ptr(stream);
            (p, g, 2)
        }
        DType::U32 => {
            let (p, g) = s.as_cuda_slice::<u32>()?.device_ptr(stream);
            (p, g, 4)
        }
        d => bail!("no fused kernel reads {d:?} tensors"),
    };
    Ok((ptr + (offset * size) as u64, sync))
}

/// Runs `launch` with the device addresses of `tensors` (0 for `None`), each contiguous
/// and on CUDA, their storages locked until it returns.
pub(super) fn with_addresses<R>(
    tensors: &[Option<&Tensor>],
    launch: impl FnOnce(&CudaDevice, &[u64]) -> Result<R>,
) -> Result<R> {
    with_addresses_of(tensors, true, launch)
}

/// [`with_addresses`]; with `contiguous` false, a strided tensor's address is that of its
/// first element (the kernel takes its strides).
fn with_addresses_of<R>(
    tensors: &[Option<&Tensor>],
    contiguous: bool,
    launch: impl FnOnce(&CudaDevice, &[u64]) -> Result<R>,
) -> Result<R> {
    let locked = tensors
        .iter()
        .map(|t| {
            t.map(|t| {
                let (storage, layout) = t.storage_and_layout();
                if contiguous && !layout.is_contiguous() {
                    bail!("fused kernel input {:?} is not contiguous", t.shape());
                }
                Ok((storage, layout.start_offset()))
            })
            .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let storages = locked
        .iter()
        .map(|l| match l {
            Some((storage, offset)) => match &**storage {
                Storage::Cuda(s) => Ok(Some((s, *offset))),
                _ => bail!("the fused kernels run on CUDA tensors only"),
            },
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(device) = storages
        .iter()
        .flatten()
        .map(|(s, _)| s.device.clone())
        .next()
    else {
        bail!("a fused kernel got no tensor");
    };
    let stream = device.cuda_stream();
    let mut syncs = Vec::with_capacity(storages.len());
    let mut addresses = Vec::with_capacity(storages.len());
    for s in &storages {
        match s {
            Some((s, offset)) => {
                let (ptr, sync) = address(s, *offset, &stream)?;
                addresses.push(ptr);
                syncs.push(sync);
            }
            None => addresses.push(0),
        }
    }
    let out = launch(&device, &addresses);
    drop(syncs);
    out
}

/// An uninitialised tensor for a kernel to fill, on `like`'s device in its dtype.
pub(super) fn empty(like: &Tensor, shape: Shape) -> Result<Tensor> {
    empty_as(like, like.dtype(), shape)
}

/// [`empty`] in `dtype`.
fn empty_as(like: &Tensor, dtype: DType, shape: Shape) -> Result<Tensor> {
    empty_on(like.device(), dtype, shape)
}

/// An uninitialised tensor for a kernel to fill, on `device`.
pub(super) fn empty_on(device: &candle_core::Device, dtype: DType, shape: Shape) -> Result<Tensor> {
    let candle_core::Device::Cuda(dev) = device else {
        bail!("the fused kernels run on CUDA tensors only");
    };
    let n = shape.elem_count();
    // SAFETY: every element is written by the kernel the tensor is made for.
    let storage = unsafe {
        match dtype {
            DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(n)?, dev.clone()),
            DType::BF16 => CudaStorage::wrap_cuda_slice(dev.alloc::<half::bf16>(n)?, dev.clone()),
            DType::F16 => CudaStorage::wrap_cuda_slice(dev.alloc::<half::f16>(n)?, dev.clone()),
            DType::U32 => CudaStorage::wrap_cuda_slice(dev.alloc::<u32>(n)?, dev.clone()),
            d => bail!("the fused kernels write f32, bf16, f16 or u32, not {d:?}"),
        }
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        BackpropOp::none(),
        false,
    ))
}

fn same_dtype(tensors: &[Option<&Tensor>], dtype: DType) -> Result<()> {
    for t in tensors.iter().flatten() {
        if t.dtype() != dtype {
            bail!(
                "fused kernel inputs must share one dtype: {:?} next to {dtype:?}",
                t.dtype()
            );
        }
    }
    Ok(())
}

/// `silu(gate) · up` (`silu_mul` in decode.cu); with `q8`, the product also written there
/// as Q8_1 blocks (`silu_mul_q8`).
pub(super) fn silu_mul(
    gate_up: &Tensor,
    inter: usize,
    q8: Option<&super::quant_matvec::Q8Activations>,
    wide: bool,
) -> Result<Tensor> {
    let dims = gate_up.dims();
    let Some((&last, lead)) = dims.split_last() else {
        bail!("silu_mul needs a [.., 2·intermediate] tensor");
    };
    if last != 2 * inter {
        bail!("silu_mul: last dim {last} is not 2 × {inter}");
    }
    let rows: usize = lead.iter().product();
    let mut out_dims = lead.to_vec();
    out_dims.push(inter);
    let out = empty(gate_up, Shape::from_dims(&out_dims))?;
    if wide && q8.is_none() {
        let name = format!("silu_mul_wide_{}", suffix(gate_up.dtype())?);
        let done = with_addresses(&[Some(gate_up), Some(&out)], |dev, p| {
            launch_wide(dev, &name, p, rows, inter)
        })?;
        if done {
            return Ok(out);
        }
    }
    let kernel = if q8.is_some() {
        "silu_mul_q8"
    } else {
        "silu_mul"
    };
    let name = format!("{kernel}_{}", suffix(gate_up.dtype())?);
    // The blocks cover padded rows: the q8 kernel's threads run over them too.
    let width = q8.map_or(inter, |q| q.padded_k());
    with_addresses(&[Some(gate_up), Some(&out)], |dev, p| {
        let func = custom_func!(dev, &name, MODULE, PTX);
        let stream = dev.cuda_stream();
        let launch = |q8_ptr: Option<u64>| -> Result<()> {
            let blocks = (rows * width).div_ceil(256).clamp(1, 65_535) as u32;
            let (rows, inter, width) = (rows as u32, inter as u32, width as u32);
            let mut b = early_launch::Args::new();
            b.arg(&p[0]).arg(&p[1]);
            if let Some(ptr) = &q8_ptr {
                b.arg(ptr);
            }
            b.arg(&rows).arg(&inter);
            if q8_ptr.is_some() {
                b.arg(&width);
            }
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; sizes checked above, the
            // blocks sized for rows × padded values by Q8Activations.
            unsafe { b.launch(dev, &func, cfg) }?;
            Ok(())
        };
        match q8 {
            Some(q) => q.with_address(&stream, |ptr| launch(Some(ptr))),
            None => launch(None),
        }
    })?;
    Ok(out)
}

/// The widest row `add_rms_norm_rows` holds (ROWS_NORM_COLS · 256 in decode.cu).
const NORM_ROWS_MAX_N: usize = 4096;

/// The residual add and RMSNorm of a decode step in one launch (`add_rms_norm` in
/// decode.cu): `(x + delta, RMSNorm(x + delta) · w)`, or `(x, RMSNorm(x) · w)` without a
/// delta; with `q8`, the normed rows also written there as Q8_1 blocks. With `prompt`
/// (many rows: a prefill's or the vision tower's), rows of 1,024 to 4,096 values take
/// `add_rms_norm_rows` (256 threads a row, four rows an SM; the same bits); a decode
/// step's few rows keep 1,024 threads each.
pub(super) fn add_rms_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    norm: HeadNorm<'_>,
    q8: Option<&super::quant_matvec::Q8Activations>,
    prompt: bool,
) -> Result<(Tensor, Tensor)> {
    let n = x.dims().last().copied().unwrap_or(0);
    if n == 0 || norm.weight.elem_count() != n {
        bail!(
            "add_rms_norm: x {:?} against a norm of {}",
            x.shape(),
            norm.weight.elem_count()
        );
    }
    if let Some(d) = delta {
        if d.shape() != x.shape() {
            bail!(
                "add_rms_norm: delta {:?} next to x {:?}",
                d.shape(),
                x.shape()
            );
        }
    }
    same_dtype(&[Some(x), delta, Some(norm.weight)], x.dtype())?;
    let rows = x.elem_count() / n;
    let sum = delta.map(|_| empty(x, x.shape().clone())).transpose()?;
    let normed = empty(x, x.shape().clone())?;
    if prompt && q8.is_none() && (1024..=NORM_ROWS_MAX_N).contains(&n) {
        let name = format!("add_rms_norm_rows_{}", suffix(x.dtype())?);
        let inputs = [
            Some(x),
            delta,
            Some(norm.weight),
            sum.as_ref(),
            Some(&normed),
        ];
        with_addresses(&inputs, |dev, p| {
            let func = custom_func!(dev, &name, MODULE, PTX);
            let (n, eps) = (n as i32, norm.eps as f32);
            let mut a = func.builder();
            for ptr in p {
                a.arg(ptr);
            }
            a.arg(&n).arg(&eps);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; shapes checked above, n within
            // the 16 columns a thread of 256 holds.
            unsafe { a.launch(cfg) }.w()?;
            Ok(())
        })?;
        return Ok((sum.unwrap_or_else(|| x.clone()), normed));
    }
    let name = format!("add_rms_norm_{}", suffix(x.dtype())?);
    let n_padded = q8.map_or(n, |q| q.padded_k());
    let eps = norm.eps as f32;
    let inputs = [
        Some(x),
        delta,
        Some(norm.weight),
        sum.as_ref(),
        Some(&normed),
    ];
    with_addresses(&inputs, |dev, p| {
        let func = custom_func!(dev, &name, MODULE, PTX);
        let stream = dev.cuda_stream();
        let launch = |q8_ptr: u64| -> Result<()> {
            let (n, n_padded) = (n as i32, n_padded as i32);
            let mut b = early_launch::Args::new();
            b.arg(&p[0]).arg(&p[1]).arg(&p[2]).arg(&p[3]).arg(&p[4]);
            b.arg(&q8_ptr).arg(&n).arg(&n_padded).arg(&eps);
            // candle's norm block sizes: the kernel repeats its reduction.
            let threads = if n < 1024 { 32 } else { 1024 };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; shapes checked above, the
            // blocks sized for rows × n_padded values by Q8Activations.
            unsafe { b.launch(dev, &func, cfg) }?;
            Ok(())
        };
        match q8 {
            Some(q) => q.with_address(&stream, launch),
            None => launch(0),
        }
    })?;
    Ok((sum.unwrap_or_else(|| x.clone()), normed))
}

/// The name part of `dtype`'s kernels in `dequant.cu` (`dequantize_{part}_bf16`,
/// `embed_{part}_bf16`), if it has them.
pub(super) fn bf16_kernels(dtype: candle_core::quantized::GgmlDType) -> Option<&'static str> {
    use candle_core::quantized::GgmlDType as G;
    Some(match dtype {
        G::Q8_0 => "q8_0",
        G::Q4_0 => "q4_0",
        G::Q4K => "q4k",
        G::Q6K => "q6k",
        _ => return None,
    })
}

/// One launch of a `dequant.cu` kernel over `groups` groups of 8 values, 256 threads a
/// block (the kernels loop over whatever the grid does not cover).
fn dequant_launch(groups: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (groups.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `rows × k` values of `w` from `offset` bytes into its blocks (whole rows), dequantized
/// straight to bf16 (dequant.cu); an error for a block type without such a kernel
/// ([`bf16_kernels`]).
pub(super) fn dequantize_bf16(
    w: &candle_core::quantized::QTensor,
    offset: usize,
    (rows, k): (usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let Some(part) = bf16_kernels(w.dtype()) else {
        bail!("no bf16 dequantize kernel for {:?}", w.dtype());
    };
    let values = rows * k;
    if !values.is_multiple_of(w.dtype().block_size()) {
        bail!("{values} values are not whole {:?} blocks", w.dtype());
    }
    let out = empty_on(device, DType::BF16, Shape::from_dims(&[rows, k]))?;
    with_addresses(&[Some(&out)], |dev, p| {
        let func = custom_func!(
            dev,
            &format!("dequantize_{part}_bf16"),
            DEQUANT_MODULE,
            DEQUANT_PTX
        );
        let stream = dev.cuda_stream();
        let (src, _src_sync) = w.device_ptr_with_guard(&stream)?;
        let src = src as u64 + offset as u64;
        let groups = values / 8;
        let mut a = func.builder();
        a.arg(&src).arg(&p[0]).arg(&groups);
        // SAFETY: the kernel reads the whole blocks of `values` values from `src`, inside
        // `w`'s buffer (the caller passes whole rows within it), and writes `values` bf16
        // values to `out`, which holds that many.
        unsafe { a.launch(dequant_launch(groups)) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

/// Rows `ids` (u32, contiguous, on `w`'s card) of the quantized table `w [rows, hidden]`,
/// dequantized straight to bf16: `[ids, hidden]`. An id past the table gives a row of
/// zeros. An error for a block type without such a kernel ([`bf16_kernels`]) or a row that
/// is not whole blocks.
pub(super) fn embed_bf16(w: &candle_core::quantized::QTensor, ids: &Tensor) -> Result<Tensor> {
    let Some(part) = bf16_kernels(w.dtype()) else {
        bail!("no bf16 embedding kernel for {:?}", w.dtype());
    };
    let (rows, hidden) = w.shape().dims2()?;
    let block = w.dtype().block_size();
    if !hidden.is_multiple_of(block) || ids.dtype() != DType::U32 {
        bail!(
            "a quantized lookup takes u32 ids and rows of whole {block}-value blocks, not {:?} ids into {hidden} values",
            ids.dtype()
        );
    }
    let count = ids.elem_count();
    let out = empty_on(
        ids.device(),
        DType::BF16,
        Shape::from_dims(&[count, hidden]),
    )?;
    if count == 0 {
        return Ok(out);
    }
    with_addresses(&[Some(ids), Some(&out)], |dev, p| {
        let func = custom_func!(
            dev,
            &format!("embed_{part}_bf16"),
            DEQUANT_MODULE,
            DEQUANT_PTX
        );
        let stream = dev.cuda_stream();
        let (src, _src_sync) = w.device_ptr_with_guard(&stream)?;
        let src = src as u64;
        let row_groups = hidden / 8;
        let row_bytes = hidden / block * w.dtype().type_size();
        let rows =
            u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("{rows} rows")))?;
        let mut a = func.builder();
        a.arg(&src)
            .arg(&p[0])
            .arg(&p[1])
            .arg(&count)
            .arg(&row_groups)
            .arg(&row_bytes)
            .arg(&rows);
        // SAFETY: `ids` holds `count` u32s; each id below `rows` reads `row_bytes` bytes of
        // whole blocks inside `w`'s `rows` rows (others read nothing); `out` holds `count ×
        // hidden` bf16 values, all written.
        unsafe { a.launch(dequant_launch(count * row_groups)) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

/// The quant_matvec.cu kernels' name part for `w`'s block type, where they take its rows at
/// `address` (Q4_K 16-byte aligned, for its 16-byte loads; Q6_K any).
pub(super) fn own_matvec(
    w: &candle_core::quantized::QTensor,
    address: u64,
) -> Option<&'static str> {
    use candle_core::quantized::GgmlDType as G;
    match w.dtype() {
        G::Q4K if address.is_multiple_of(16) => Some("q4k"),
        G::Q6K if address.is_multiple_of(2) => Some("q6k"),
        _ => None,
    }
}

/// `y [rows, n] = x Wᵀ` (quant_matvec.cu) for the weight at `w` in `block`'s format
/// ([`own_matvec`]; `n` rows of `k` values, whole 256-value super-blocks) and `rows` (1-8)
/// rows of Q8_1 activations at `x`, `x_blocks` blocks a row, into the `dtype` tensor at
/// `y`. Launched on `dev`'s stream; the caller holds the three buffers.
pub(super) fn matvec_quant(
    dev: &CudaDevice,
    block: &str,
    (w, x, y): (u64, u64, u64),
    (rows, n, k, x_blocks): (usize, usize, usize, usize),
    dtype: DType,
) -> Result<()> {
    const WARPS: usize = 8; // MATVEC_WARPS in the kernel
    if !(1..=8).contains(&rows) || !k.is_multiple_of(256) || x_blocks * 32 < k {
        bail!("{block} matvec: {rows} rows of {k} values ({x_blocks} Q8_1 blocks) against {n} outputs");
    }
    let name = format!("matvec_{block}_{}_m{rows}", suffix(dtype)?);
    let func = custom_func!(dev, &name, QUANT_MATVEC_MODULE, QUANT_MATVEC_PTX);
    let (n32, sbs, xb) = (n as i32, (k / 256) as i32, x_blocks as i32);
    let mut a = early_launch::Args::new();
    a.arg(&w).arg(&x).arg(&y).arg(&n32).arg(&sbs).arg(&xb);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(WARPS) as u32, 1, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the caller passes live device buffers: `w` holds n × k/256 blocks of
    // `block`, `x` rows × x_blocks Q8_1 blocks (x_blocks · 32 ≥ k) and `y` rows × n values
    // of `dtype`.
    unsafe { a.launch(dev, &func, cfg) }?;
    Ok(())
}

/// What both attention kernels read, checked: the batch, the cache's capacity, the dtype,
/// the norm's epsilon and the tensors in the kernels' argument order (qkv, bias, cos, sin,
/// norm weight, k cache, v cache).
struct Step<'a> {
    batch: usize,
    cap: usize,
    dtype: DType,
    eps: f32,
    inputs: [Option<&'a Tensor>; 7],
}

#[allow(clippy::too_many_arguments)]
fn check_step<'a>(
    qkv: &'a Tensor,
    bias: Option<&'a Tensor>,
    cos: &'a Tensor,
    sin: &'a Tensor,
    norm: Option<HeadNorm<'a>>,
    heads: &Heads,
    k_cache: &'a Tensor,
    v_cache: &'a Tensor,
) -> Result<Step<'a>> {
    let width = (heads.q + 2 * heads.kv) * heads.dim;
    let b = qkv.dim(0)?;
    if qkv.elem_count() != b * width {
        bail!(
            "fused decode: qkv {:?} is not [batch, {width}]",
            qkv.shape()
        );
    }
    if let Some(bias) = bias {
        if bias.elem_count() != width {
            bail!("fused decode: bias {:?} is not [{width}]", bias.shape());
        }
    }
    if cos.elem_count() != b * heads.dim / 2 || sin.shape() != cos.shape() {
        bail!(
            "fused decode: rope tables {:?} are not [batch, {}]",
            cos.shape(),
            heads.dim / 2
        );
    }
    let (cb, ckv, cap, cd) = k_cache.dims4()?;
    if (cb, ckv, cd) != (b, heads.kv, heads.dim)
        || !heads.q.is_multiple_of(heads.kv)
        || v_cache.shape() != k_cache.shape()
    {
        bail!(
            "fused decode: caches {:?} do not match batch {b}, {} kv heads of {}",
            k_cache.shape(),
            heads.kv,
            heads.dim
        );
    }
    let dtype = k_cache.dtype();
    let inputs = [
        Some(qkv),
        bias,
        Some(cos),
        Some(sin),
        norm.as_ref().map(|n| n.weight),
        Some(k_cache),
        Some(v_cache),
    ];
    same_dtype(&inputs, dtype)?;
    Ok(Step {
        batch: b,
        cap,
        dtype,
        eps: norm.map_or(0.0, |n| n.eps as f32),
        inputs,
    })
}

/// Pushes a [`Step`]'s seven addresses with the epsilon after the norm weight, as both
/// kernels take them.
fn push_step<'a>(a: &mut early_launch::Args<'a>, p: &'a [u64], eps: &'a f32) {
    a.arg(&p[0]).arg(&p[1]).arg(&p[2]).arg(&p[3]).arg(&p[4]);
    a.arg(eps).arg(&p[5]).arg(&p[6]);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write_kv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    k_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: CacheLen<'_>,
) -> Result<()> {
    let step = check_step(qkv, bias, cos, sin, k_norm, heads, k_cache, v_cache)?;
    check_len(&len, step.cap, k_cache)?;
    // kv_write_dev reads the length from the device (a captured step), kv_write takes it.
    let captured = len.on_device.is_some();
    let dev_len = if captured { "dev_" } else { "" };
    let name = format!("kv_write_{dev_len}{}", suffix(step.dtype)?);
    let mut all = step.inputs.to_vec();
    all.push(len.on_device);
    with_addresses(&all, |dev, p| {
        let func = custom_func!(dev, &name, MODULE, PTX);
        let (nq, nkv, d) = (heads.q as i32, heads.kv as i32, heads.dim as i32);
        let (cap, pos) = (step.cap as i32, len.value as i32 - 1);
        let mut a = early_launch::Args::new();
        push_step(&mut a, p, &step.eps);
        a.arg(&nq).arg(&nkv).arg(&d).arg(&cap);
        if captured {
            a.arg(&p[7]);
        } else {
            a.arg(&pos);
        }
        let cfg = LaunchConfig {
            grid_dim: (heads.kv as u32, step.batch as u32, 1),
            // Whole warps: the key norm reduces with full-warp shuffles.
            block_dim: ((heads.dim as u32 / 2).max(32), 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature; shapes checked above.
        unsafe { a.launch(dev, &func, cfg) }?;
        Ok(())
    })
}

/// A prompt's q, k and v from the fused projection (`prefill_qkv` in decode.cu): `qkv`
/// `[b, l, (q + 2 kv)·dim]` plus `bias` if given, the per-head norms if any, RoPE from `cos`
/// and `sin` `[b, l, dim/2]`; returns q `[b, q, l, dim]` and writes k and v into the
/// caches `[b, kv, cap, dim]` at positions `pos .. pos + l`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prefill_qkv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    q_norm: Option<HeadNorm<'_>>,
    k_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    pos: usize,
) -> Result<Tensor> {
    /// `PREFILL_MAX_D` and `PREFILL_WARPS` in decode.cu.
    const MAX_D: usize = 256;
    const WARPS: usize = 4;
    let (b, l, width) = qkv.dims3()?;
    let (nq, nkv, d) = (heads.q, heads.kv, heads.dim);
    if width != (nq + 2 * nkv) * d || d % 2 != 0 || d > MAX_D {
        bail!("prefill_qkv: qkv {:?} for {heads:?}", qkv.shape());
    }
    let dtype = qkv.dtype();
    let (cb, ckv, cap, cd) = k_cache.dims4()?;
    if (cb, ckv, cd) != (b, nkv, d) || v_cache.shape() != k_cache.shape() || pos + l > cap {
        bail!(
            "prefill_qkv: caches {:?} for {l} positions from {pos} of {b} sequences",
            k_cache.shape()
        );
    }
    for t in [cos, sin] {
        if t.dims() != [b, l, d / 2] {
            bail!(
                "prefill_qkv: RoPE table {:?}, want [{b}, {l}, {}]",
                t.shape(),
                d / 2
            );
        }
    }
    if bias.is_some_and(|t| t.elem_count() != width) {
        bail!(
            "prefill_qkv: a bias of {:?} for {width} outputs",
            bias.map(Tensor::shape)
        );
    }
    if l > 65_535 || b > 65_535 {
        bail!("prefill_qkv: {b} sequences of {l} positions exceed a launch's grid");
    }
    let (q_w, k_w) = (q_norm.map(|n| n.weight), k_norm.map(|n| n.weight));
    if q_norm.is_some() != k_norm.is_some()
        || [q_w, k_w]
            .into_iter()
            .flatten()
            .any(|w| w.elem_count() != d)
    {
        bail!("prefill_qkv: per-head norms must come as a q and k pair of [{d}]");
    }
    let eps = q_norm.or(k_norm).map_or(0.0, |n| n.eps) as f32;
    same_dtype(
        &[
            bias,
            Some(cos),
            Some(sin),
            q_w,
            k_w,
            Some(k_cache),
            Some(v_cache),
        ],
        dtype,
    )?;
    let q = empty(qkv, Shape::from_dims(&[b, nq, l, d]))?;
    let name = format!("prefill_qkv_{}", suffix(dtype)?);
    let inputs = [
        Some(qkv),
        bias,
        Some(cos),
        Some(sin),
        q_w,
        k_w,
        Some(&q),
        Some(k_cache),
        Some(v_cache),
    ];
    with_addresses(&inputs, |dev, p| {
        let func = custom_func!(dev, &name, MODULE, PTX);
        let mut a = func.builder();
        for ptr in &p[..6] {
            a.arg(ptr);
        }
        a.arg(&eps);
        for ptr in &p[6..] {
            a.arg(ptr);
        }
        let ints = [nq, nkv, d, l, cap, pos].map(|v| v as i32);
        for v in &ints {
            a.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: ((nq + nkv).div_ceil(WARPS) as u32, l as u32, b as u32),
            block_dim: (32 * WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature; shapes, dtypes and the grid's
        // limits checked above, the claimed positions inside the caches.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok(q)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_attention(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    q_norm: Option<HeadNorm<'_>>,
    heads: &Heads,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: CacheLen<'_>,
    pad: Option<&Tensor>,
    q8: Option<&super::quant_matvec::Q8Activations>,
    new_kv: NewKv<'_>,
    slice_counters: Option<&Tensor>,
    runtime: &vlm_contract::RuntimeOptions,
) -> Result<Tensor> {
    let step = check_step(qkv, bias, cos, sin, q_norm, heads, k_cache, v_cache)?;
    let (write_new, k_norm) = match new_kv {
        NewKv::Cached => (false, None),
        NewKv::Write { k_norm } => (true, k_norm),
    };
    if let Some(n) = k_norm {
        if n.weight.elem_count() != heads.dim || n.weight.dtype() != step.dtype {
            bail!(
                "fused decode: the key norm {:?} {:?} is not [{}] {:?}",
                n.weight.dtype(),
                n.weight.shape(),
                heads.dim,
                step.dtype
            );
        }
    }
    let k_eps = k_norm.map_or(0.0, |n| n.eps as f32);
    if let Some(c) = slice_counters {
        if c.dtype() != DType::U32 || c.elem_count() != step.batch * heads.q {
            bail!(
                "fused decode: slice counters {:?} {:?} are not [{}] u32",
                c.dtype(),
                c.shape(),
                step.batch * heads.q
            );
        }
    }
    let b = step.batch;
    if q8.is_some() && heads.dim < 32 {
        bail!(
            "fused decode: Q8_1 output needs heads of at least 32 values, not {}",
            heads.dim
        );
    }
    check_len(&len, step.cap, k_cache)?;
    if let Some(pad) = pad {
        if pad.dtype() != DType::U32 || pad.elem_count() != b {
            bail!(
                "fused decode: pad must be [batch] u32, got {:?}",
                pad.shape()
            );
        }
    }
    let out = empty(k_cache, Shape::from_dims(&[b, heads.q * heads.dim]))?;
    // A captured step's slices follow the capacity, not the length: replays keep the
    // launch shape.
    let captured = len.on_device.is_some();
    let mma = mma_decode_applies(runtime, step.dtype, heads, b);
    // The tensor-core kernel runs a block per kv head and reads its keys in tiles of 64.
    let (groups, min_keys) = if mma {
        (heads.kv, MMA_DECODE_MIN_KEYS)
    } else {
        (heads.q, DECODE_MIN_KEYS)
    };
    let splits = decode_splits(
        b * groups,
        if captured { step.cap } else { len.value },
        runtime.decode_slice_blocks,
        min_keys,
    );
    // Each slice's unnormalised sum, max and total, merged by decode_combine.
    let partial = if splits > 1 {
        let n = b * heads.q * splits * (heads.dim + 2);
        // Every slice of every head writes its d + 2 values before decode_combine reads them.
        Some(empty_as(k_cache, DType::F32, Shape::from_dims(&[n]))?)
    } else {
        None
    };
    let suffix = suffix(step.dtype)?;
    let dev_len = if captured { "_dev" } else { "" };
    let kernel = if mma {
        "decode_attention_mma"
    } else {
        "decode_attention"
    };
    let name = format!("{kernel}_{suffix}_d{}{dev_len}", heads.dim);
    let mut all = step.inputs.to_vec();
    all.extend([pad, Some(&out), partial.as_ref(), len.on_device]);
    all.push(k_norm.map(|n| n.weight));
    // With counters the slices' last block merges them: no combine launch (decode.cu's
    // kernel; the tensor-core kernel's slices always take decode_combine).
    let counters = slice_counters.filter(|_| splits > 1 && !mma);
    all.push(counters);
    // The Q8_1 blocks for the output projection are written by the launch that writes the
    // output: the attention itself with one slice, else the combine.
    let k_padded = q8.map_or(0, |q| q.padded_k() as i32);
    with_addresses(&all, |dev, p| {
        let stream = dev.cuda_stream();
        let launch = |q8_ptr: u64| -> Result<()> {
            let (module, ptx) = if mma { DECODE_MMA } else { (MODULE, PTX) };
            let func = custom_func!(dev, &name, module, ptx);
            let (nq, nkv) = (heads.q as i32, heads.kv as i32);
            let (cap, kv_len) = (step.cap as i32, len.value as i32);
            // Host length: the new position, or −1 when write_kv put it in the caches.
            let new_pos = if write_new { kv_len - 1 } else { -1 };
            let write_flag = i32::from(write_new);
            let attention_q8 = if splits == 1 || counters.is_some() {
                q8_ptr
            } else {
                0
            };
            let mut a = early_launch::Args::new();
            push_step(&mut a, p, &step.eps);
            a.arg(&p[7]).arg(&p[8]).arg(&p[9]);
            a.arg(&nq).arg(&nkv).arg(&cap);
            if captured {
                a.arg(&p[10]).arg(&write_flag);
            } else {
                a.arg(&kv_len).arg(&new_pos);
            }
            a.arg(&p[11]).arg(&k_eps);
            a.arg(&attention_q8).arg(&k_padded).arg(&p[12]);
            let cfg = LaunchConfig {
                grid_dim: (groups as u32, b as u32, splits as u32),
                block_dim: (if mma { 128 } else { 256 }, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; shapes checked above, the
            // blocks (if any) sized for b rows of k_padded values by Q8Activations.
            unsafe { a.launch(dev, &func, cfg) }?;
            if splits > 1 && counters.is_none() {
                let func = custom_func!(dev, &format!("decode_combine_{suffix}"), MODULE, PTX);
                let (d, splits) = (heads.dim as i32, splits as i32);
                let mut a = early_launch::Args::new();
                a.arg(&p[9]).arg(&p[8]).arg(&nq).arg(&d).arg(&splits);
                a.arg(&q8_ptr).arg(&k_padded);
                let cfg = LaunchConfig {
                    grid_dim: (heads.q as u32, b as u32, 1),
                    // At least a warp: the first one reads the slices' maxima and totals.
                    block_dim: (heads.dim.max(32) as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: arguments match the kernel's signature; `partial` holds every
                // slice.
                unsafe { a.launch(dev, &func, cfg) }?;
            }
            Ok(())
        };
        match q8 {
            Some(q) => q.with_address(&stream, launch),
            None => launch(0),
        }
    })?;
    Ok(out)
}

/// The step's cache length: within the cache, and on the device a `[1]` u32.
fn check_len(len: &CacheLen<'_>, cap: usize, k_cache: &Tensor) -> Result<()> {
    if let Some(t) = len.on_device {
        if t.dtype() != DType::U32 || t.elem_count() != 1 {
            bail!(
                "fused decode: the cache length must be a [1] u32 tensor, got {:?} {:?}",
                t.dtype(),
                t.shape()
            );
        }
    }
    if len.value == 0 || len.value > cap {
        bail!(
            "fused decode: {} positions in the cache {:?}",
            len.value,
            k_cache.shape()
        );
    }
    Ok(())
}

/// Keys a slice of decode.cu's kernel takes at least.
const DECODE_MIN_KEYS: usize = 128;
/// Keys a slice of decode_mma.cu's kernel takes at least: one tile.
const MMA_DECODE_MIN_KEYS: usize = 64;

/// Key slices per head for [`decode_attention`] (`heads`: the launch's blocks per slice,
/// sequences × query heads, or × kv heads for the tensor-core kernel): enough blocks for
/// `target` ([`vlm_contract::RuntimeOptions::decode_slice_blocks`], by default 224 on an
/// H100/H200's 132 multiprocessors), each slice at least `min_keys` keys (of `kv_len`: the
/// length, or for a captured step the capacity), at most decode_shared.cuh's
/// `COMBINE_SPLITS`.
fn decode_splits(heads: usize, kv_len: usize, target: usize, min_keys: usize) -> usize {
    const COMBINE_SPLITS: usize = 512;
    target
        .div_ceil(heads.max(1))
        .min(kv_len / min_keys.max(1))
        .clamp(1, COMBINE_SPLITS)
}

/// Query heads a kv head must serve for decode_mma.cu's kernel: with groups of 2
/// (Qwen3-VL-2B) it was slower than decode.cu's at a batch of 8 (run 48).
const MMA_DECODE_MIN_GROUP: usize = 4;

/// Whether [`decode_attention`] takes decode_mma.cu's kernel for a step of `batch`
/// sequences: a build with the tensor-core kernels, bf16/f16, heads of 64 or 128 values,
/// 4 to 16 query heads a kv head (the product's rows), a batch of at least
/// [`vlm_contract::RuntimeOptions::mma_decode_min_batch`] (0: never).
fn mma_decode_applies(
    runtime: &vlm_contract::RuntimeOptions,
    dtype: DType,
    heads: &Heads,
    batch: usize,
) -> bool {
    let min = runtime.mma_decode_min_batch;
    cfg!(vlm_flash)
        && min > 0
        && batch >= min
        && matches!(dtype, DType::BF16 | DType::F16)
        && matches!(heads.dim, 64 | 128)
        && heads.kv > 0
        && heads.q.is_multiple_of(heads.kv)
        && (MMA_DECODE_MIN_GROUP..=16).contains(&(heads.q / heads.kv))
}

/// The checks both few-row products make of `x [m, k]`, `w [n, k]` and the bias (`what`
/// names the kernel in errors); returns `(m, n, k)` and the output `[m, n]`.
fn few_row_product(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    rows: std::ops::RangeInclusive<usize>,
    what: &str,
) -> Result<((usize, usize, usize), Tensor)> {
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims2()?;
    if wk != k || !rows.contains(&m) || k % 8 != 0 {
        bail!(
            "{what}: x {:?}, w {:?} (want {rows:?} rows, k a multiple of 8)",
            x.shape(),
            w.shape()
        );
    }
    if !w.layout().start_offset().is_multiple_of(8) || !x.layout().start_offset().is_multiple_of(8)
    {
        bail!("{what}: operands must start on a 16-byte boundary");
    }
    if let Some(b) = bias {
        if b.elem_count() != n {
            bail!("{what}: bias {:?} is not [{n}]", b.shape());
        }
    }
    same_dtype(&[Some(x), bias], w.dtype())?;
    Ok(((m, n, k), empty(w, Shape::from_dims(&[m, n]))?))
}

/// Launches the few-row product `name` of `module` (gemv in decode.cu, mma_gemv.cu's):
/// x, w, the bias and out as [`few_row_product`] checked them, then `sizes`, over `blocks`
/// blocks of 256 threads.
fn launch_few_row_product(
    operands: [Option<&Tensor>; 4],
    (name, module, ptx): (&str, &'static str, &'static str),
    sizes: &[i32],
    blocks: usize,
) -> Result<()> {
    with_addresses(&operands, |dev, p| {
        let func = custom_func!(dev, name, module, ptx);
        let mut a = early_launch::Args::new();
        for address in p {
            a.arg(address);
        }
        for size in sizes {
            a.arg(size);
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernels' signatures (x, w, bias, y, then the sizes
        // each caller passes); shapes checked by few_row_product.
        unsafe { a.launch(dev, &func, cfg) }?;
        Ok(())
    })
}

pub(super) fn gemv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let ((m, n, k), out) = few_row_product(x, w, bias, 1..=super::GEMV_ROWS, "gemv")?;
    let name = format!("gemv_{}_m{m}", suffix(w.dtype())?);
    launch_few_row_product(
        [Some(x), Some(w), bias, Some(&out)],
        (&name, MODULE, PTX),
        &[n as i32, k as i32],
        n.div_ceil(8),
    )?;
    Ok(out)
}

/// `wide`: two 16-output tiles a warp (mma_gemv.cu's `_w2` kernels).
#[cfg(vlm_flash)]
pub(super) fn mma_gemv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    wide: bool,
) -> Result<Tensor> {
    let ((m, n, k), out) = few_row_product(x, w, bias, 1..=super::MMA_GEMV_ROWS, "mma_gemv")?;
    let dtype = w.dtype();
    if !matches!(dtype, DType::BF16 | DType::F16) {
        bail!("mma_gemv takes bf16 or f16, not {dtype:?}");
    }
    // One kernel per 8-row tile count of x (mma_gemv.cu).
    let name = format!(
        "mma_gemv_{}_t{}{}",
        suffix(dtype)?,
        m.div_ceil(8),
        if wide { "_w2" } else { "" }
    );
    let outputs = if wide { 32 } else { 16 };
    launch_few_row_product(
        [Some(x), Some(w), bias, Some(&out)],
        (&name, MMA_GEMV_MODULE, MMA_GEMV_PTX),
        &[m as i32, n as i32, k as i32],
        n.div_ceil(outputs),
    )?;
    Ok(out)
}

pub(super) fn vision_qkv(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, width) = qkv.dims2()?;
    if heads == 0 || width % (3 * heads) != 0 || !(width / (3 * heads)).is_multiple_of(2) {
        bail!(
            "vision_qkv: qkv {:?} is not [n, 3 · {heads} heads · an even head size]",
            qkv.shape()
        );
    }
    let d = width / (3 * heads);
    if let Some(b) = bias {
        if b.elem_count() != width {
            bail!("vision_qkv: bias {:?} is not [{width}]", b.shape());
        }
    }
    same_dtype(&[bias], qkv.dtype())?;
    for t in [cos, sin] {
        if t.dtype() != DType::F32 || t.dims() != [n, d] {
            bail!(
                "vision_qkv: rope tables must be [{n}, {d}] f32, got {:?} {:?}",
                t.shape(),
                t.dtype()
            );
        }
    }
    let shape = || Shape::from_dims(&[heads, n, d]);
    let (q, k, v) = (
        empty(qkv, shape())?,
        empty(qkv, shape())?,
        empty(qkv, shape())?,
    );
    let name = format!("vision_qkv_{}", suffix(qkv.dtype())?);
    let tensors = [
        Some(qkv),
        bias,
        Some(cos),
        Some(sin),
        Some(&q),
        Some(&k),
        Some(&v),
    ];
    with_addresses(&tensors, |dev, p| {
        let func = custom_func!(dev, &name, VISION_MODULE, VISION_PTX);
        let (n32, h32, d32) = (n as i32, heads as i32, d as i32);
        let mut a = func.builder();
        for ptr in p {
            a.arg(ptr);
        }
        a.arg(&n32).arg(&h32).arg(&d32).arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature; shapes checked above.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok((q, k, v))
}

/// `(heads, n, d)` of segment attention's `q`, `k`, `v` (`[heads, n, d]`, one dtype), checked
/// against each other and `segments`.
fn segment_operands(
    name: &str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &super::Segments,
) -> Result<(usize, usize, usize)> {
    let (heads, n, d) = q.dims3()?;
    if k.shape() != q.shape() || v.shape() != q.shape() {
        bail!(
            "{name}: q {:?}, k {:?} and v {:?} differ",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if segments.rows != n {
        bail!(
            "{name}: the segments cover {} rows, q has {n}",
            segments.rows
        );
    }
    same_dtype(&[Some(k), Some(v)], q.dtype())?;
    Ok((heads, n, d))
}

pub(super) fn segment_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &super::Segments,
) -> Result<Tensor> {
    let (heads, n, d) = segment_operands("segment_attention", q, k, v, segments)?;
    if !segments.fit_kernel(d) {
        bail!(
            "segment_attention: {} segments of up to {} rows of {d} do not fit a block's shared memory",
            segments.count,
            segments.max_len
        );
    }
    let shared = super::segment_attention_shared_bytes(segments.max_len, d);
    let out = empty(q, Shape::from_dims(&[n, heads * d]))?;
    let name = format!("segment_attention_{}", suffix(q.dtype())?);
    let tensors = [
        Some(q),
        Some(k),
        Some(v),
        Some(&segments.bounds),
        Some(&out),
    ];
    with_addresses(&tensors, |dev, p| {
        let func = custom_func!(dev, &name, VISION_MODULE, VISION_PTX);
        let (n32, h32, d32) = (n as i32, heads as i32, d as i32);
        let max_len = segments.max_len as i32;
        let mut a = func.builder();
        for ptr in p {
            a.arg(ptr);
        }
        a.arg(&n32).arg(&h32).arg(&d32).arg(&max_len);
        let cfg = LaunchConfig {
            grid_dim: (segments.count as u32, heads as u32, 1),
            block_dim: (super::SEGMENT_THREADS as u32, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: arguments match the kernel's signature; shapes and the shared memory
        // size checked above.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

/// The launch of the column-wise kernels of ops.cu over `[rows, n]`: a thread per column,
/// a block row per row up to the grid's limit (the kernels stride over the rest).
fn columns_by_rows(rows: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, rows.clamp(1, 65_535) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn add_bias(x: &Tensor, bias: &Tensor, wide: bool) -> Result<Tensor> {
    let n = bias.elem_count();
    let dims = x.dims();
    if dims.last() != Some(&n) || bias.rank() != 1 {
        bail!(
            "add_bias: bias {:?} does not match the last dim of {:?}",
            bias.shape(),
            x.shape()
        );
    }
    same_dtype(&[Some(bias)], x.dtype())?;
    let rows = x.elem_count() / n.max(1);
    let out = empty(x, x.shape().clone())?;
    if wide {
        let name = format!("add_bias_wide_{}", suffix(x.dtype())?);
        let done = with_addresses(&[Some(x), Some(bias), Some(&out)], |dev, p| {
            launch_wide(dev, &name, p, rows, n)
        })?;
        if done {
            return Ok(out);
        }
    }
    let name = format!("add_bias_{}", suffix(x.dtype())?);
    with_addresses(&[Some(x), Some(bias), Some(&out)], |dev, p| {
        let func = custom_func!(dev, &name, OPS_MODULE, OPS_PTX);
        let (rows32, n32) = (rows as i32, n as i32);
        let mut a = func.builder();
        a.arg(&p[0]).arg(&p[1]).arg(&p[2]).arg(&rows32).arg(&n32);
        // SAFETY: arguments match the kernel's signature; shapes checked above.
        unsafe { a.launch(columns_by_rows(rows, n)) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

/// The device buffers of one argmax over `[rows, n]` logits: the per-block partials and
/// the `[rows, 2]` (index, finite) result.
pub(super) struct ArgmaxScratch {
    rows: usize,
    n: usize,
    chunks: usize,
    part_v: Tensor,
    part_i: Tensor,
    part_bad: Tensor,
    /// `[rows, 2]` u32: each row's index, then 1 if the row is finite.
    pub(super) out: Tensor,
}

impl ArgmaxScratch {
    /// 1,024 columns a block: a 151,936-token vocabulary spreads over 149 blocks, about one
    /// per SM, and each thread makes four loads.
    const CHUNK: usize = 1024;

    /// Values per row.
    pub(super) fn n(&self) -> usize {
        self.n
    }

    pub(super) fn new(device: &candle_core::Device, rows: usize, n: usize) -> Result<Self> {
        if rows == 0 || n == 0 || rows > 65_535 {
            bail!("argmax over {rows} rows of {n} values");
        }
        let chunks = n.div_ceil(Self::CHUNK);
        Ok(Self {
            rows,
            n,
            chunks,
            part_v: empty_on(device, DType::F32, (rows, chunks).into())?,
            part_i: empty_on(device, DType::U32, (rows, chunks).into())?,
            part_bad: empty_on(device, DType::U32, (rows, chunks).into())?,
            out: empty_on(device, DType::U32, (rows, 2).into())?,
        })
    }

    /// Queues `argmax_partial` and `argmax_final` over `x` into [`Self::out`] and, with
    /// `ids` (`[rows]` u32), each row's index into it too. With `hold`, the `[rows +
    /// n_eos]` u32 buffer ops.cu's `argmax_partial` describes, and `step`: rows whose
    /// min_new_tokens is above `step` leave the end-of-sequence ids out.
    pub(super) fn launch(
        &self,
        x: &Tensor,
        ids: Option<&Tensor>,
        hold: Option<&Tensor>,
        step: usize,
    ) -> Result<()> {
        if x.dims2()? != (self.rows, self.n) {
            bail!(
                "argmax: logits {:?} where [{}, {}] was set up",
                x.shape(),
                self.rows,
                self.n
            );
        }
        if let Some(ids) = ids {
            if ids.dtype() != DType::U32 || ids.elem_count() != self.rows {
                bail!("argmax: ids {:?} {:?}", ids.dtype(), ids.shape());
            }
        }
        let n_eos = match hold {
            Some(h) if h.dtype() == DType::U32 && h.elem_count() >= self.rows => {
                (h.elem_count() - self.rows) as i32
            }
            Some(h) => bail!("argmax: hold {:?} {:?}", h.dtype(), h.shape()),
            None => 0,
        };
        let step32 = i32::try_from(step).unwrap_or(i32::MAX);
        let name = format!("argmax_partial_{}", suffix(x.dtype())?);
        let tensors = [
            Some(x),
            Some(&self.part_v),
            Some(&self.part_i),
            Some(&self.part_bad),
            Some(&self.out),
            ids,
            hold,
        ];
        with_addresses(&tensors, |dev, p| {
            let (n32, chunk32, chunks32) = (self.n as i32, Self::CHUNK as i32, self.chunks as i32);
            let partial = custom_func!(dev, &name, OPS_MODULE, OPS_PTX);
            let mut a = early_launch::Args::new();
            a.arg(&p[0])
                .arg(&p[1])
                .arg(&p[2])
                .arg(&p[3])
                .arg(&n32)
                .arg(&chunk32)
                .arg(&p[6])
                .arg(&n_eos)
                .arg(&step32);
            let cfg = LaunchConfig {
                grid_dim: (self.chunks as u32, self.rows as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the kernel's signature; the partials are [rows, chunks].
            unsafe { a.launch(dev, &partial, cfg) }?;
            let last = custom_func!(dev, "argmax_final", OPS_MODULE, OPS_PTX);
            let mut a = early_launch::Args::new();
            a.arg(&p[1])
                .arg(&p[2])
                .arg(&p[3])
                .arg(&p[4])
                .arg(&p[5])
                .arg(&chunks32);
            let cfg = LaunchConfig {
                grid_dim: (self.rows as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; `out` is [rows, 2], `ids` [rows] or null.
            unsafe { a.launch(dev, &last, cfg) }?;
            Ok(())
        })
    }
}

/// Each row's first largest value's index and whether the row is finite, for `[rows, n]`
/// logits (`argmax_partial` and `argmax_final` in ops.cu), brought back in one copy.
pub(super) fn argmax_rows(x: &Tensor) -> Result<(Vec<u32>, Vec<bool>)> {
    let (rows, n) = x.dims2()?;
    let x = x.contiguous()?;
    let scratch = ArgmaxScratch::new(x.device(), rows, n)?;
    scratch.launch(&x, None, None, 0)?;
    let pairs = scratch.out.to_vec2::<u32>()?;
    Ok((
        pairs.iter().map(|r| r[0]).collect(),
        pairs.iter().map(|r| r[1] == 1).collect(),
    ))
}

pub(super) fn softmax(x: &Tensor, mask: Option<&super::CausalMask<'_>>) -> Result<Tensor> {
    let dims = x.dims();
    let Some(&k) = dims.last() else {
        bail!("softmax of a scalar");
    };
    let rows = x.elem_count() / k.max(1);
    let (causal, q_len, rows_per_seq, offset) = match mask {
        None => (0i32, 1i32, 1i32, 0i32),
        Some(m) => {
            let (b, h, q, kv) = x.dims4()?;
            if q > kv {
                bail!("causal softmax: {q} queries over {kv} keys");
            }
            if let Some(pad) = m.pad {
                if pad.dtype() != DType::U32 || pad.elem_count() != b {
                    bail!(
                        "causal softmax: pad must be [{b}] u32, got {:?}",
                        pad.shape()
                    );
                }
            }
            (1, q as i32, (h * q) as i32, (kv - q) as i32)
        }
    };
    let out = empty(x, x.shape().clone())?;
    let name = format!("softmax_rows_{}", suffix(x.dtype())?);
    let pad = mask.and_then(|m| m.pad);
    with_addresses(&[Some(x), Some(&out), pad], |dev, p| {
        let func = custom_func!(dev, &name, OPS_MODULE, OPS_PTX);
        let k32 = k as i32;
        let mut a = func.builder();
        a.arg(&p[0]).arg(&p[1]).arg(&p[2]).arg(&k32);
        a.arg(&causal).arg(&q_len).arg(&rows_per_seq).arg(&offset);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature; shapes checked above.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

pub(super) fn gated_silu(
    gate: &Tensor,
    up: &Tensor,
    gate_bias: Option<&Tensor>,
    up_bias: Option<&Tensor>,
    wide: bool,
) -> Result<Tensor> {
    let Some(&n) = gate.dims().last() else {
        bail!("gated_silu of a scalar");
    };
    if up.shape() != gate.shape() {
        bail!(
            "gated_silu: gate {:?} and up {:?} differ",
            gate.shape(),
            up.shape()
        );
    }
    for b in [gate_bias, up_bias].into_iter().flatten() {
        if b.elem_count() != n {
            bail!("gated_silu: bias {:?} is not [{n}]", b.shape());
        }
    }
    same_dtype(&[Some(up), gate_bias, up_bias], gate.dtype())?;
    let rows = gate.elem_count() / n.max(1);
    let out = empty(gate, gate.shape().clone())?;
    if wide {
        let name = format!("gated_silu_wide_{}", suffix(gate.dtype())?);
        let inputs = [Some(gate), Some(up), gate_bias, up_bias, Some(&out)];
        let done = with_addresses(&inputs, |dev, p| launch_wide(dev, &name, p, rows, n))?;
        if done {
            return Ok(out);
        }
    }
    let name = format!("gated_silu_{}", suffix(gate.dtype())?);
    with_addresses(
        &[Some(gate), Some(up), gate_bias, up_bias, Some(&out)],
        |dev, p| {
            let func = custom_func!(dev, &name, OPS_MODULE, OPS_PTX);
            let (rows32, n32) = (rows as i32, n as i32);
            let mut a = func.builder();
            for ptr in p {
                a.arg(ptr);
            }
            a.arg(&rows32).arg(&n32);
            // SAFETY: arguments match the kernel's signature; shapes checked above.
            unsafe { a.launch(columns_by_rows(rows, n)) }.w()?;
            Ok(())
        },
    )?;
    Ok(out)
}

/// One launch of a wide kernel of ops.cu (`add_bias_wide`, `gated_silu_wide`,
/// `silu_mul_wide`) over `rows` rows of `n` values: its pointer arguments `ptrs` (0 for an
/// absent bias), then the pack counts. False, launching nothing, where the
/// kernel's 16-byte accesses do not fit (n not a multiple of 8, an address off 16 bytes, a
/// tensor of 2^35 values or more); the caller then takes the one-value-a-thread kernel.
fn launch_wide(dev: &CudaDevice, name: &str, ptrs: &[u64], rows: usize, n: usize) -> Result<bool> {
    let packs = rows * (n / 8);
    let aligned = ptrs.iter().all(|p| p % 16 == 0);
    if !n.is_multiple_of(8) || !aligned || rows == 0 || packs > u32::MAX as usize {
        return Ok(false);
    }
    let func = custom_func!(dev, name, OPS_MODULE, OPS_PTX);
    let (packs32, row_packs) = (packs as u32, (n / 8) as u32);
    let mut a = func.builder();
    for ptr in ptrs {
        a.arg(ptr);
    }
    a.arg(&packs32).arg(&row_packs);
    let cfg = LaunchConfig {
        grid_dim: (packs.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match the kernel's signature (pointers, then the two counts); the
    // callers checked the shapes, and every address is 16-byte aligned for its accesses.
    unsafe { a.launch(cfg) }.w()?;
    Ok(true)
}

/// Strides (elements) of a `[sequence, head, row, d]` operand of the flash kernel.
#[cfg(vlm_flash)]
type FlashStrides = [i64; 3];

/// The strides of `t`'s three leading dims (`[a, b, rows, d]` or, with `a` absent, `[b,
/// rows, d]`), checked for the kernel's 16-byte loads: d contiguous, every stride and the
/// start a multiple of 8 elements.
#[cfg(vlm_flash)]
fn flash_strides(t: &Tensor, name: &str) -> Result<FlashStrides> {
    let layout = t.layout();
    let stride = layout.stride();
    let dims = t.dims();
    let aligned = stride.last() == Some(&1)
        && layout.start_offset().is_multiple_of(8)
        && stride[..stride.len() - 1].iter().all(|s| s % 8 == 0)
        && dims.last().is_some_and(|d| d % 8 == 0);
    if !aligned {
        bail!(
            "flash attention: {name} {:?} (strides {stride:?}) is not laid out in rows of whole 16-byte chunks",
            t.shape()
        );
    }
    Ok(match stride.len() {
        4 => [stride[0] as i64, stride[1] as i64, stride[2] as i64],
        3 => [0, stride[0] as i64, stride[1] as i64],
        r => bail!("flash attention: {name} has rank {r}, not 3 or 4"),
    })
}

/// The padded head size the flash kernels are instantiated for.
#[cfg(vlm_flash)]
fn flash_width(d: usize) -> Result<usize> {
    Ok(match d {
        1..=64 => 64,
        65..=80 => 80,
        81..=128 => 128,
        _ => bail!("flash attention takes head sizes up to 128, not {d}"),
    })
}

/// What one flash launch reads besides its tensors.
#[cfg(vlm_flash)]
struct FlashLaunch {
    grid: (u32, u32, u32),
    q_len: i32,
    kv_len: i32,
    rep: i32,
    causal: bool,
    d: usize,
    strides: [FlashStrides; 4],
}

#[cfg(vlm_flash)]
fn launch_flash(tensors: [Option<&Tensor>; 6], spec: FlashLaunch) -> Result<()> {
    let dtype = tensors[0].map(|t| t.dtype()).unwrap_or(DType::F32);
    if !matches!(dtype, DType::BF16 | DType::F16) {
        bail!("flash attention runs in bf16 or f16, not {dtype:?}");
    }
    let name = format!(
        "flash_attention_{}_d{}",
        suffix(dtype)?,
        flash_width(spec.d)?
    );
    with_addresses_of(&tensors, false, |dev, p| {
        let func = custom_func!(dev, &name, ATTENTION_MODULE, ATTENTION_PTX);
        let (causal, d, scale) = (i32::from(spec.causal), spec.d as i32, 1f32);
        let mut a = func.builder();
        for ptr in p {
            a.arg(ptr);
        }
        a.arg(&spec.q_len)
            .arg(&spec.kv_len)
            .arg(&spec.rep)
            .arg(&causal)
            .arg(&d)
            .arg(&scale);
        for s in &spec.strides {
            a.arg(&s[0]).arg(&s[1]).arg(&s[2]);
        }
        let cfg = LaunchConfig {
            grid_dim: spec.grid,
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's signature; the strides and head size were
        // checked for its loads, the grid covers only rows that exist.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    })
}

#[cfg(vlm_flash)]
pub(super) fn segment_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &super::Segments,
) -> Result<Tensor> {
    let (heads, n, d) = segment_operands("segment_flash_attention", q, k, v, segments)?;
    let out = empty(q, Shape::from_dims(&[n, heads, d]))?;
    if segments.count == 0 || segments.max_len == 0 {
        return out.reshape((n, heads * d));
    }
    let spec = FlashLaunch {
        grid: (
            segments.max_len.div_ceil(64) as u32,
            segments.count as u32,
            heads as u32,
        ),
        q_len: n as i32,
        kv_len: n as i32,
        rep: 1,
        causal: false,
        d,
        strides: [
            flash_strides(q, "q")?,
            flash_strides(k, "k")?,
            flash_strides(v, "v")?,
            // out [n, heads, d] read as [head, row, d]
            [0, d as i64, (heads * d) as i64],
        ],
    };
    launch_flash(
        [
            Some(q),
            Some(k),
            Some(v),
            Some(&out),
            Some(&segments.bounds),
            None,
        ],
        spec,
    )?;
    out.reshape((n, heads * d))
}

#[cfg(vlm_flash)]
pub(super) fn prefill_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pad: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, l, d) = q.dims4()?;
    let (kb, kv_heads, kv_len, kd) = k.dims4()?;
    if v.dims4()? != (kb, kv_heads, kv_len, kd) || kb != b || kd != d {
        bail!(
            "prefill_flash_attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if kv_heads == 0 || heads % kv_heads != 0 || kv_len < l {
        bail!(
            "prefill_flash_attention: {heads} query heads over {kv_heads} kv heads, {l} queries over {kv_len} keys"
        );
    }
    if let Some(p) = pad {
        if p.dims() != [b] || p.dtype() != DType::U32 {
            bail!(
                "prefill_flash_attention: pad must be [{b}] u32, not {:?} {:?}",
                p.shape(),
                p.dtype()
            );
        }
    }
    same_dtype(&[Some(k), Some(v)], q.dtype())?;
    let out = empty(q, Shape::from_dims(&[b, l, heads, d]))?;
    let spec = FlashLaunch {
        grid: (l.div_ceil(64) as u32, b as u32, heads as u32),
        q_len: l as i32,
        kv_len: kv_len as i32,
        rep: (heads / kv_heads) as i32,
        causal: true,
        d,
        strides: [
            flash_strides(q, "q")?,
            flash_strides(k, "k")?,
            flash_strides(v, "v")?,
            // out [b, l, heads, d] read as [sequence, head, row, d]
            [(l * heads * d) as i64, d as i64, (heads * d) as i64],
        ],
    };
    launch_flash([Some(q), Some(k), Some(v), Some(&out), None, pad], spec)?;
    out.reshape((b, l, heads * d))
}
