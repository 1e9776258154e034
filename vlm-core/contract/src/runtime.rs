//! How a loaded model runs on the GPU: which of our CUDA kernels it uses, from how many
//! rows a projection takes which path, whether decode steps are replayed as CUDA graphs.
//! None of these change what a model computes beyond rounding; they exist to measure
//! what each path brings, and to tune batch sizes, with one binary.
//!
//! Each model keeps the [`RuntimeOptions`] it was loaded with ([`crate::LoadOptions`]),
//! so two models in one process may run with different settings. The library reads no
//! environment variable for them: binaries (the `vlm` CLI, `vlm-bench`, the examples, the
//! Python module) call [`RuntimeOptions::from_env`] to honour the `VLM_*` variables.

/// Settings of the GPU paths a loaded model takes; the CPU path depends on none of them.
/// The default is what the library does when nothing is set.
///
/// ```
/// use vlm_contract::{LoadOptions, RuntimeOptions};
///
/// // Decode without CUDA graphs, to measure what they bring.
/// let runtime = RuntimeOptions::default().with_cuda_graphs(false);
/// let options = LoadOptions::default().with_runtime(runtime);
/// assert!(!options.runtime.cuda_graphs);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Our fused CUDA kernels (decode attention, KV-cache writes, gemv, softmax, bias,
    /// gated SiLU, the vision tower's attention). Off, every layer takes candle's unfused
    /// path, the reference the kernels are checked against. Default on; environment:
    /// `VLM_FUSED_KERNELS=0` turns it off.
    pub fused_kernels: bool,
    /// Most rows (sequences in a decode step) for which a float projection runs our gemv
    /// kernel instead of cuBLAS: 0 never, at most 8 (larger values act as 8). Default 1:
    /// on an H200 gemv decoded 3-5% faster at one row and made batch-8 generation 15-30%
    /// slower (runs 14 and 15). Environment: `VLM_GEMV=0` gives 0, `VLM_GEMV=1` gives 8,
    /// anything else the default.
    pub gemv_max_rows: usize,
    /// Most rows (sequences in a batch's decode step) for which a float projection that
    /// gemv does not take runs our product on the tensor cores (`kernels/mma_gemv.cu`:
    /// each weight read once, 16 outputs a warp) instead of cuBLAS, in bf16/f16 on builds
    /// for compute capability 8.0 and above; 0 or 1 never, larger values act as 32.
    /// Default 16: on an H100 (run 46) it read Qwen2.5-VL-7B's weights faster than cuBLAS
    /// from 2 to 16 rows (o_proj at 8 rows 10.4 → 9.4 µs, at 16 rows 16.1 → 10.7) and more
    /// slowly at 32 (gate/up 98 → 108 µs), for −1.5% decode time at batch 8. Environment:
    /// `VLM_MMA_GEMV=N` (a non-negative integer; anything else gives the default).
    pub mma_gemv_max_rows: usize,
    /// Rows from which a quantized projection on CUDA dequantizes its weight and runs a
    /// float GEMM instead of candle's quantized matmul: 0 never; values from 1 to 8 act
    /// as 9 (up to 8 rows the quantized matvec is faster). Default 64: prefills and
    /// batches take the GEMM, decode steps keep the matvec (run 28: 0.398 → 0.337 s per
    /// photo for Qwen2.5-VL-7B at int4). Environment: `VLM_QUANT_GEMM_ROWS=N` (a
    /// non-negative integer; anything else gives the default).
    pub quant_gemm_rows: usize,
    /// Decode steps captured as CUDA graphs and replayed, where the fused decode kernels
    /// run (run 21: 196 → 218 tok/s for Qwen2.5-VL-7B in bf16). Default on; environment:
    /// `VLM_CUDA_GRAPH=0` turns it off.
    pub cuda_graphs: bool,
    /// Flash attention on the tensor cores for the vision tower and the decoder's prefill,
    /// in bf16/f16 on builds for compute capability 8.0 and above. Default on;
    /// environment: `VLM_FLASH_ATTENTION=0` turns it off.
    pub flash_attention: bool,
    /// Asks the CUDA driver to keep the memory that freed tensors return to the device's
    /// pool instead of handing it back at each synchronisation, so that the vision tower
    /// and prefill do not map fresh pages on every call; the process then holds its peak,
    /// as PyTorch's caching allocator does. The pool belongs to the device: once a model
    /// on it asks, every model on that device keeps. Default off (not yet measured);
    /// environment: `VLM_CUDA_POOL_KEEP=1` turns it on.
    pub cuda_pool_keep: bool,
    /// candle's quantized matmul kernels for Int8/Int4 layers. Off, every quantized
    /// projection dequantizes its weight and runs a float GEMM, at any number of rows:
    /// what a card gets whose kernels fail the check at load (a build for another card,
    /// docs/troubleshooting.md), here to measure that path or to step around those
    /// kernels. Default on; environment: `VLM_QUANT_KERNELS=0` turns it off.
    pub quant_kernels: bool,
    /// Most weight values a quantized projection that dequantizes on every call (where
    /// candle's quantized kernels do not run, or [`Self::quant_kernels`] is off) takes at
    /// once for its float GEMM: the weight's rows are dequantized a slice at a time, each
    /// just before its product, so the call holds ~4 bytes per value of one slice (f16,
    /// then the activations' dtype) instead of the whole weight (Qwen3-VL-2B's LM head:
    /// 1.2 GB). A prefill's slices are kept wide enough for its GEMM to fill the card,
    /// which may exceed this. 0: the whole weight at once. Where the quantized kernels run,
    /// a prefill's dequantized GEMM ([`Self::quant_gemm_rows`]) takes whole weights: slices
    /// made it 9.6% slower there (run 38). Default 8M values (~32 MB). Environment:
    /// `VLM_DEQUANT_SLICE=N` (a non-negative integer; anything else gives the default).
    pub dequant_slice_values: usize,
    /// At a decode step through the fused kernels, each residual add runs in the launch of
    /// the RMSNorm after it, which also writes the quantized projection's input blocks
    /// (Q8_1), and the MLP's `silu(gate) · up` writes the down projection's: ~4 launches
    /// fewer per layer. Same values as the separate launches. Default on; environment:
    /// `VLM_FUSED_NORM=0` turns it off, to measure what it brings with one binary.
    pub fused_norms: bool,
    /// On cards of compute capability 9.0 and up, each of the decode step's own kernels is
    /// launched to start while the kernel before it finishes (programmatic dependent
    /// launch): its blocks come up, request their weights, and wait on the card for the
    /// earlier kernels' results. Run 43 (H200) measured no gain: Qwen3-VL-2B int4/int4
    /// decoded at 709-724 tok/s with it and 717-737 without, Qwen2.5-VL-7B int4 at 369
    /// against 366. The setting belongs to the device: once a model on it asks, every
    /// model on that device launches so. Default off; environment: `VLM_EARLY_LAUNCH=1`
    /// turns it on.
    pub early_launch: bool,
    /// Greedy decoding on CUDA picks each token on the device, where the next step reads
    /// it, and the host queues that step before it looks at the token: the GPU runs while
    /// the host checks for the end, streams the text and launches. A batch that ends before
    /// its length has run one step more than it keeps (its work is dropped). Calls that
    /// need each step's rows on the host (sampling, a repetition penalty, returned logits
    /// or logprobs, an output schema) step in turn either way; `min_new_tokens` is applied
    /// on the device. Same tokens. Default on; environment: `VLM_RUN_AHEAD=0` turns it off.
    pub run_ahead: bool,
    /// When a request decoded through a replayed CUDA graph ends, its KV caches and graph
    /// are kept for the next request on the same thread with the same batch size, cache
    /// size (rounded up to 128 positions) and no padded sequence: that request replays the
    /// graph from its first decode step instead of running one step eagerly and capturing
    /// its own graph (~6 ms a request on Qwen3-VL-2B int4/int4; +10% decode tok/s, H100
    /// run 45). A model keeps at most two such sets, the newest, one per thread; between
    /// requests they hold those requests' KV caches and graph memory. Same tokens. Default on; environment:
    /// `VLM_REUSE_GRAPHS=0` turns it off.
    pub reuse_graphs: bool,
    /// Blocks a decode-attention launch aims for (sequences × query heads × key slices):
    /// each head's keys are cut into enough slices to reach it, each slice of at least 128
    /// keys, at most 512; a card with fewer multiprocessors than an H100/H200's 132 may
    /// want fewer. Default 224: on an H100 (run 47) it gave a batch of 8 one slice a head
    /// (Qwen2.5-VL-7B bf16) or two (Qwen3-VL-2B int4) instead of 264's two or three, batch-8
    /// decode −3% and −5%, and one sequence the same slices; 1,056 was slower (+4% at 8,
    /// +6% at 32). Environment: `VLM_DECODE_SLICE_BLOCKS=N` (a positive integer; anything
    /// else gives the default).
    pub decode_slice_blocks: usize,
    /// Smallest batch (sequences in a decode step) whose decode attention runs on the
    /// tensor cores (`kernels/decode_mma.cu`) where each kv head serves 4 to 16 query heads:
    /// a block per kv head, sequence and key slice takes the whole group as the rows of one
    /// product, so each cached row is read once per group instead of once per head, through
    /// shared memory in tiles of 64 keys. bf16/f16, heads of 64 or 128 values, builds for
    /// compute capability 8.0 and above; elsewhere the kernel on the CUDA cores runs. The
    /// probabilities are rounded to the model's dtype before their product with the values,
    /// as in the prefill's flash attention, so the output moves in the last bits. 0 never.
    /// Default 2: on an H100 (run 48) Qwen2.5-VL-7B bf16 (groups of 7) decoded a batch of 32
    /// 18% faster (521-531 → 426-428 ms for 64 tokens) and a batch of 8 2.7% faster, one
    /// sequence 1.2% slower; Qwen3-VL-2B int4 (groups of 2) a batch of 8 2.5% slower, hence
    /// the groups of at least 4. Environment: `VLM_MMA_DECODE=N` (a non-negative integer;
    /// anything else gives the default).
    pub mma_decode_min_batch: usize,
    /// The prefill's and the vision tower's element-wise work in fewer, wider passes: a
    /// prompt's q, k and v prepared in one launch a layer after the projection (per-head
    /// norms, RoPE, the heads' layout and the KV-cache writes, ~10 of candle's launches
    /// before), each
    /// residual add of the decoder's prefill and of Qwen2.5-VL's vision blocks in the launch
    /// of the RMSNorm after it (256 threads a row, four rows a multiprocessor), and the
    /// bias, `silu(gate) · up` and gated-SiLU kernels eight values a thread in 16-byte
    /// accesses (the default ones move one value a thread, ~1.2 TB/s of an H100's 3.35
    /// under ncu in run 48). Same values bit for bit (the q/k/v launch in bf16 and f16 only:
    /// in f32 its RoPE rounded differently from candle's in run 49, so f32 keeps candle's
    /// ops there). On an H100 (run 49, Qwen2.5-VL-7B bf16, 1024×768) a batch of 8 went from
    /// 10.1 to 10.9-11.4 photos/s and a batch of 32 from 15.3-15.5 to 17.1-17.3; one photo's
    /// vision tower 21.3 → 16.9-17.6 ms and prefill 30.4 → 23.1-24.0 ms. Default on;
    /// environment: `VLM_PREFILL_KERNELS=0` turns it off.
    pub prefill_kernels: bool,
}

/// The default of [`RuntimeOptions::gemv_max_rows`].
const DEFAULT_GEMV_MAX_ROWS: usize = 1;
/// What `VLM_GEMV=1` asks for: every row count the gemv kernel takes.
const GEMV_ALL_ROWS: usize = 8;
/// The default of [`RuntimeOptions::mma_gemv_max_rows`].
const DEFAULT_MMA_GEMV_MAX_ROWS: usize = 16;
/// The default of [`RuntimeOptions::quant_gemm_rows`] (run 28, docs/benchmarks.md).
const DEFAULT_QUANT_GEMM_ROWS: usize = 64;
/// The default of [`RuntimeOptions::dequant_slice_values`].
const DEFAULT_DEQUANT_SLICE_VALUES: usize = 8 << 20;
/// The default of [`RuntimeOptions::decode_slice_blocks`].
const DEFAULT_DECODE_SLICE_BLOCKS: usize = 224;
/// The default of [`RuntimeOptions::mma_decode_min_batch`].
const DEFAULT_MMA_DECODE_MIN_BATCH: usize = 2;

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            fused_kernels: true,
            gemv_max_rows: DEFAULT_GEMV_MAX_ROWS,
            mma_gemv_max_rows: DEFAULT_MMA_GEMV_MAX_ROWS,
            quant_gemm_rows: DEFAULT_QUANT_GEMM_ROWS,
            cuda_graphs: true,
            flash_attention: true,
            cuda_pool_keep: false,
            quant_kernels: true,
            dequant_slice_values: DEFAULT_DEQUANT_SLICE_VALUES,
            fused_norms: true,
            early_launch: false,
            run_ahead: true,
            reuse_graphs: true,
            decode_slice_blocks: DEFAULT_DECODE_SLICE_BLOCKS,
            mma_decode_min_batch: DEFAULT_MMA_DECODE_MIN_BATCH,
            prefill_kernels: true,
        }
    }
}

impl RuntimeOptions {
    /// The environment variables [`Self::from_env`] reads, in field order.
    pub const ENV_VARS: [&'static str; 16] = [
        "VLM_FUSED_KERNELS",
        "VLM_GEMV",
        "VLM_MMA_GEMV",
        "VLM_QUANT_GEMM_ROWS",
        "VLM_CUDA_GRAPH",
        "VLM_FLASH_ATTENTION",
        "VLM_CUDA_POOL_KEEP",
        "VLM_QUANT_KERNELS",
        "VLM_DEQUANT_SLICE",
        "VLM_FUSED_NORM",
        "VLM_EARLY_LAUNCH",
        "VLM_RUN_AHEAD",
        "VLM_REUSE_GRAPHS",
        "VLM_DECODE_SLICE_BLOCKS",
        "VLM_MMA_DECODE",
        "VLM_PREFILL_KERNELS",
    ];

    /// The defaults, changed by whichever `VLM_*` variables the process has set (each
    /// field's documentation says how its variable is read; values are trimmed, and a
    /// value that is not valid Unicode counts as unset). For binaries: the library never
    /// reads them itself.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any source of variables (`lookup` returns a variable's
    /// value, `None` when unset): a config file's table, or a test's map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned());
        let is = |name: &str, value: &str| var(name).is_some_and(|v| v == value);
        let defaults = Self::default();
        Self {
            fused_kernels: !is("VLM_FUSED_KERNELS", "0"),
            gemv_max_rows: match var("VLM_GEMV").as_deref() {
                Some("0") => 0,
                Some("1") => GEMV_ALL_ROWS,
                _ => defaults.gemv_max_rows,
            },
            mma_gemv_max_rows: var("VLM_MMA_GEMV")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.mma_gemv_max_rows),
            quant_gemm_rows: var("VLM_QUANT_GEMM_ROWS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.quant_gemm_rows),
            cuda_graphs: !is("VLM_CUDA_GRAPH", "0"),
            flash_attention: !is("VLM_FLASH_ATTENTION", "0"),
            cuda_pool_keep: is("VLM_CUDA_POOL_KEEP", "1"),
            quant_kernels: !is("VLM_QUANT_KERNELS", "0"),
            dequant_slice_values: var("VLM_DEQUANT_SLICE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.dequant_slice_values),
            fused_norms: !is("VLM_FUSED_NORM", "0"),
            early_launch: is("VLM_EARLY_LAUNCH", "1"),
            run_ahead: !is("VLM_RUN_AHEAD", "0"),
            reuse_graphs: !is("VLM_REUSE_GRAPHS", "0"),
            decode_slice_blocks: var("VLM_DECODE_SLICE_BLOCKS")
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or(defaults.decode_slice_blocks),
            mma_decode_min_batch: var("VLM_MMA_DECODE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.mma_decode_min_batch),
            prefill_kernels: !is("VLM_PREFILL_KERNELS", "0"),
        }
    }

    /// Sets [`Self::fused_kernels`].
    pub fn with_fused_kernels(mut self, on: bool) -> Self {
        self.fused_kernels = on;
        self
    }

    /// Sets [`Self::gemv_max_rows`].
    pub fn with_gemv_max_rows(mut self, rows: usize) -> Self {
        self.gemv_max_rows = rows;
        self
    }

    /// Sets [`Self::mma_gemv_max_rows`].
    pub fn with_mma_gemv_max_rows(mut self, rows: usize) -> Self {
        self.mma_gemv_max_rows = rows;
        self
    }

    /// Sets [`Self::quant_gemm_rows`].
    pub fn with_quant_gemm_rows(mut self, rows: usize) -> Self {
        self.quant_gemm_rows = rows;
        self
    }

    /// Sets [`Self::cuda_graphs`].
    pub fn with_cuda_graphs(mut self, on: bool) -> Self {
        self.cuda_graphs = on;
        self
    }

    /// Sets [`Self::flash_attention`].
    pub fn with_flash_attention(mut self, on: bool) -> Self {
        self.flash_attention = on;
        self
    }

    /// Sets [`Self::cuda_pool_keep`].
    pub fn with_cuda_pool_keep(mut self, on: bool) -> Self {
        self.cuda_pool_keep = on;
        self
    }

    /// Sets [`Self::quant_kernels`].
    pub fn with_quant_kernels(mut self, on: bool) -> Self {
        self.quant_kernels = on;
        self
    }

    /// Sets [`Self::dequant_slice_values`].
    pub fn with_dequant_slice_values(mut self, values: usize) -> Self {
        self.dequant_slice_values = values;
        self
    }

    /// Sets [`Self::fused_norms`].
    pub fn with_fused_norms(mut self, on: bool) -> Self {
        self.fused_norms = on;
        self
    }

    /// Sets [`Self::early_launch`].
    pub fn with_early_launch(mut self, on: bool) -> Self {
        self.early_launch = on;
        self
    }

    /// Sets [`Self::run_ahead`].
    pub fn with_run_ahead(mut self, on: bool) -> Self {
        self.run_ahead = on;
        self
    }

    /// Sets [`Self::reuse_graphs`].
    pub fn with_reuse_graphs(mut self, on: bool) -> Self {
        self.reuse_graphs = on;
        self
    }

    /// Sets [`Self::decode_slice_blocks`] (0 acts as 1).
    pub fn with_decode_slice_blocks(mut self, blocks: usize) -> Self {
        self.decode_slice_blocks = blocks.max(1);
        self
    }

    /// Sets [`Self::mma_decode_min_batch`].
    pub fn with_mma_decode_min_batch(mut self, batch: usize) -> Self {
        self.mma_decode_min_batch = batch;
        self
    }

    /// Sets [`Self::prefill_kernels`].
    pub fn with_prefill_kernels(mut self, on: bool) -> Self {
        self.prefill_kernels = on;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::RuntimeOptions;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> RuntimeOptions {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RuntimeOptions::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn unset_variables_give_the_defaults() {
        let want = RuntimeOptions::default();
        assert_eq!(parse(&[]), want);
        assert!(want.fused_kernels && want.cuda_graphs && want.flash_attention);
        assert!(want.quant_kernels && want.fused_norms && want.run_ahead && want.reuse_graphs);
        assert_eq!(want.mma_gemv_max_rows, 16);
        assert!(!want.cuda_pool_keep && !want.early_launch && want.prefill_kernels);
        assert_eq!((want.gemv_max_rows, want.quant_gemm_rows), (1, 64));
        assert_eq!(want.decode_slice_blocks, 224);
        assert_eq!(want.mma_decode_min_batch, 2);
    }

    #[test]
    fn switches_turn_off_at_0_only() {
        for (name, get) in [
            (
                "VLM_FUSED_KERNELS",
                (|o: RuntimeOptions| o.fused_kernels) as fn(RuntimeOptions) -> bool,
            ),
            ("VLM_CUDA_GRAPH", |o| o.cuda_graphs),
            ("VLM_FLASH_ATTENTION", |o| o.flash_attention),
            ("VLM_QUANT_KERNELS", |o| o.quant_kernels),
            ("VLM_FUSED_NORM", |o| o.fused_norms),
            ("VLM_RUN_AHEAD", |o| o.run_ahead),
            ("VLM_REUSE_GRAPHS", |o| o.reuse_graphs),
            ("VLM_PREFILL_KERNELS", |o| o.prefill_kernels),
        ] {
            assert!(!get(parse(&[(name, "0")])), "{name}=0");
            assert!(!get(parse(&[(name, " 0\n")])), "{name} trimmed");
            for on in ["1", "", "off", "false", "00"] {
                assert!(get(parse(&[(name, on)])), "{name}={on:?}");
            }
        }
    }

    #[test]
    fn pool_keep_and_early_launch_turn_on_at_1_only() {
        for (name, get) in [
            (
                "VLM_CUDA_POOL_KEEP",
                (|o: RuntimeOptions| o.cuda_pool_keep) as fn(RuntimeOptions) -> bool,
            ),
            ("VLM_EARLY_LAUNCH", |o| o.early_launch),
        ] {
            assert!(get(parse(&[(name, "1")])), "{name}=1");
            assert!(get(parse(&[(name, " 1 ")])), "{name} trimmed");
            for off in ["0", "", "yes", "true", "2"] {
                assert!(!get(parse(&[(name, off)])), "{name}={off:?}");
            }
        }
    }

    #[test]
    fn gemv_takes_0_none_1_all_else_one_row() {
        let rows = |v| parse(&[("VLM_GEMV", v)]).gemv_max_rows;
        assert_eq!(rows("0"), 0);
        assert_eq!(rows("1"), 8);
        assert_eq!(rows(" 1 "), 8);
        for other in ["", "2", "8", "yes"] {
            assert_eq!(rows(other), 1, "{other:?}");
        }
    }

    #[test]
    fn quant_gemm_rows_takes_a_number_else_the_default() {
        let rows = |v| parse(&[("VLM_QUANT_GEMM_ROWS", v)]).quant_gemm_rows;
        assert_eq!(rows("0"), 0);
        assert_eq!(rows("3"), 3);
        assert_eq!(rows(" 128 "), 128);
        for other in ["", "-1", "64k", "1e3"] {
            assert_eq!(rows(other), 64, "{other:?}");
        }
    }

    #[test]
    fn mma_gemv_takes_a_number_else_the_default() {
        let rows = |v| parse(&[("VLM_MMA_GEMV", v)]).mma_gemv_max_rows;
        assert_eq!(rows("0"), 0);
        assert_eq!(rows(" 8 "), 8);
        for other in ["", "-1", "on", "8 rows"] {
            assert_eq!(rows(other), 16, "{other:?}");
        }
    }

    #[test]
    fn dequant_slice_takes_a_number_else_the_default() {
        let values = |v| parse(&[("VLM_DEQUANT_SLICE", v)]).dequant_slice_values;
        assert_eq!(values("0"), 0);
        assert_eq!(values(" 4194304 "), 4 << 20);
        for other in ["", "-1", "8M", "all"] {
            assert_eq!(values(other), 8 << 20, "{other:?}");
        }
    }

    #[test]
    fn decode_slice_blocks_take_a_positive_number_else_the_default() {
        let blocks = |v| parse(&[("VLM_DECODE_SLICE_BLOCKS", v)]).decode_slice_blocks;
        assert_eq!(blocks(" 1056 "), 1056);
        assert_eq!(blocks("1"), 1);
        for other in ["", "0", "-1", "1k"] {
            assert_eq!(blocks(other), 224, "{other:?}");
        }
        let set = RuntimeOptions::default().with_decode_slice_blocks(0);
        assert_eq!(set.decode_slice_blocks, 1);
    }

    #[test]
    fn mma_decode_takes_a_number_else_the_default() {
        let batch = |v| parse(&[("VLM_MMA_DECODE", v)]).mma_decode_min_batch;
        assert_eq!(batch("0"), 0);
        assert_eq!(batch(" 1 "), 1);
        assert_eq!(batch("32"), 32);
        for other in ["", "-1", "on", "true"] {
            assert_eq!(batch(other), 2, "{other:?}");
        }
    }

    #[test]
    fn variables_are_independent() {
        let o = parse(&[
            ("VLM_FUSED_KERNELS", "0"),
            ("VLM_QUANT_GEMM_ROWS", "9"),
            ("VLM_CUDA_POOL_KEEP", "1"),
        ]);
        let want = RuntimeOptions::default()
            .with_fused_kernels(false)
            .with_quant_gemm_rows(9)
            .with_cuda_pool_keep(true);
        assert_eq!(o, want);
        assert!(RuntimeOptions::ENV_VARS
            .iter()
            .all(|v| v.starts_with("VLM_")));
    }
}
