//! A key/value cache preallocated for a sequence's maximum length and written in place:
//! appending never copies what is already cached (concatenating every step is quadratic).

use candle_core::{DType, Device, Tensor};

use vlm_contract::{Error, Result};

/// Keys and values of one attention layer, `[batch, kv_heads, capacity, head_dim]`.
pub struct LayerKvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    /// `[batch · query heads]` u32 zeros for the fused decode attention, whose last block
    /// per head merges the key slices (kernels::decode_attention_q8).
    slice_counters: Option<Tensor>,
}

impl LayerKvCache {
    /// Allocates room for `capacity` positions.
    pub fn new(
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, kv_heads, capacity, head_dim);
        // Per layer and request, hence trace: with RUST_LOG=vlm::cache=trace it shows
        // what a long max_new_tokens or a large batch costs in memory before any OOM.
        tracing::trace!(
            target: "vlm::cache",
            "KV cache: {batch} sequence(s) x {capacity} positions x {kv_heads} heads x {head_dim}, {dtype:?} on {}: {} bytes for keys and values",
            vlm_contract::device::device_name(device),
            2 * batch * kv_heads * capacity * head_dim * dtype.size_in_bytes()
        );
        Ok(Self {
            k: Tensor::zeros(shape, dtype, device)?,
            v: Tensor::zeros(shape, dtype, device)?,
            len: 0,
            slice_counters: None,
        })
    }

    /// With the counters by which the fused decode attention's blocks find the last one
    /// of each of `query_heads` heads, allocated here once: allocated in a step, they
    /// would be zeroed by a launch of their own every step.
    pub fn with_slice_counters(mut self, query_heads: usize) -> Result<Self> {
        let batch = self.k.dim(0)?;
        let device = self.k.device().clone();
        self.slice_counters = Some(Tensor::zeros(batch * query_heads, DType::U32, &device)?);
        Ok(self)
    }

    /// The counters of [`Self::with_slice_counters`], if allocated.
    pub fn slice_counters(&self) -> Option<&Tensor> {
        self.slice_counters.as_ref()
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first append.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity() {
            return Err(Error::Generation(format!(
                "KV cache full: {} + {n} positions exceed the {} allocated",
                self.len,
                self.capacity()
            )));
        }
        Ok(())
    }

    /// Claims the next `n` positions for a kernel that writes them in place. Returns the
    /// whole caches, `[batch, kv_heads, capacity, head_dim]`, and the first claimed position.
    pub fn claim(&mut self, n: usize) -> Result<(&Tensor, &Tensor, usize)> {
        self.check_room(n)?;
        let start = self.len;
        self.len += n;
        Ok((&self.k, &self.v, start))
    }

    /// Forgets the positions after the first `len` (claimed by a step that did not run);
    /// they stay allocated and are written again.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `k`, `v` (`[batch, kv_heads, n, head_dim]`) after the filled positions and
    /// returns views of everything cached, `[batch, kv_heads, len, head_dim]`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        self.check_room(n)?;
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += n;
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_place_and_refuses_overflow() {
        let dev = Device::Cpu;
        let mut c = LayerKvCache::new(1, 2, 4, 3, DType::F32, &dev).unwrap();
        let a = Tensor::ones((1, 2, 3, 3), DType::F32, &dev).unwrap();
        let (k, _) = c.append(&a, &a).unwrap();
        assert_eq!(k.dims(), &[1, 2, 3, 3]);
        let b = (Tensor::ones((1, 2, 1, 3), DType::F32, &dev).unwrap() * 2.0).unwrap();
        let (k, v) = c.append(&b, &b).unwrap();
        assert_eq!(k.dims(), &[1, 2, 4, 3]);
        let last: Vec<f32> = v
            .narrow(2, 3, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(last.iter().all(|&x| x == 2.0));
        assert!(c.append(&b, &b).is_err());
    }

    #[test]
    fn claims_positions_for_in_place_writers() {
        let dev = Device::Cpu;
        let mut c = LayerKvCache::new(1, 2, 4, 3, DType::F32, &dev).unwrap();
        let a = Tensor::ones((1, 2, 3, 3), DType::F32, &dev).unwrap();
        c.append(&a, &a).unwrap();
        let (k, _, start) = c.claim(1).unwrap();
        assert_eq!((k.dims(), start), (&[1, 2, 4, 3][..], 3));
        assert_eq!(c.len(), 4);
        assert!(c.claim(1).is_err());
        c.truncate(3);
        assert_eq!(c.claim(1).unwrap().2, 3);
    }
}
