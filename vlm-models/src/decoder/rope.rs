//! The decoder's rotary tables: which position stream drives each frequency slot
//! ([`RopeKind`]) and the cos/sin tables built from a prompt's or a step's positions.
//!
//! Positions and tables are computed in f32 on the host whatever the model dtype: in
//! bf16, integer positions above 256 are not representable (1050 becomes 1048).

use candle_core::{DType, Device, Result, Tensor};

/// How positions turn into rotary angles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// One position per token (LLaMA): every frequency slot rotates by it.
    Plain,
    /// Qwen2-VL / Qwen2.5-VL's M-RoPE: consecutive blocks of `section[0]`, `section[1]`,
    /// `section[2]` slots follow the temporal, height and width position streams.
    MRope {
        /// Slots per stream (t, h, w); they sum to `head_dim / 2`.
        section: [usize; 3],
    },
    /// Qwen3-VL's M-RoPE: the streams interleaved slot by slot (h on slots 1, 4, 7, …
    /// and w on 2, 5, 8, … up to `3 · section`), t on the rest.
    InterleavedMRope {
        /// Slots per stream (t, h, w).
        section: [usize; 3],
    },
}

impl RopeKind {
    /// Which of the t/h/w streams drives each of the `half = head_dim / 2` slots.
    pub fn stream_of_slot(self, half: usize) -> Vec<usize> {
        match self {
            Self::Plain => vec![0; half],
            Self::InterleavedMRope { section } => (0..half)
                .map(|j| match j % 3 {
                    1 if j < section[1] * 3 => 1,
                    2 if j < section[2] * 3 => 2,
                    _ => 0,
                })
                .collect(),
            Self::MRope { section } => {
                let mut out = Vec::with_capacity(half);
                for (stream, &n) in section.iter().enumerate() {
                    out.extend(std::iter::repeat_n(stream, n));
                }
                out.resize(half, 0);
                out
            }
        }
    }
}

/// Rotary inverse frequencies `1 / base^(2i/dim)`, computed in f32 like transformers.
pub fn inv_freq(dim: usize, base: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Text rotary tables: cos and sin of the `head_dim / 2` frequencies, `[batch, len,
/// head_dim / 2]` (the rotate-half layout repeats them for the second half), cast to the
/// activation dtype as transformers casts them.
pub struct RopeTables {
    inv_freq: Vec<f32>,
    stream_of_slot: Vec<usize>,
}

impl RopeTables {
    /// Tables for `head_dim` and `theta`, laid out as `kind` says.
    pub fn new(head_dim: usize, theta: f64, kind: RopeKind) -> Self {
        Self {
            inv_freq: inv_freq(head_dim, theta),
            stream_of_slot: kind.stream_of_slot(head_dim / 2),
        }
    }

    /// The cos and sin rows of one decode step, `[positions.len(), head_dim / 2]` each,
    /// flat: after the prompt the three M-RoPE streams agree, so one position per
    /// sequence.
    pub fn step_rows(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let streams: Vec<[&[i64]; 3]> = positions
            .iter()
            .map(|p| [std::slice::from_ref(p); 3])
            .collect();
        self.host_tables(&streams)
    }

    /// (cos, sin) `[batch, 1, head_dim / 2]` of one decode step at `positions`.
    pub fn step_tables(
        &self,
        positions: &[i64],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.step_rows(positions);
        self.upload(cos, sin, (positions.len(), 1), dtype, device)
    }

    /// `positions[b][s][l]` (M-RoPE's three streams) → (cos, sin) `[batch, len, head_dim / 2]`.
    pub fn tables(
        &self,
        positions: &[[Vec<i64>; 3]],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let streams: Vec<[&[i64]; 3]> = positions
            .iter()
            .map(|p| p.each_ref().map(Vec::as_slice))
            .collect();
        let (cos, sin) = self.host_tables(&streams);
        let len = positions.first().map_or(0, |p| p[0].len());
        self.upload(cos, sin, (positions.len(), len), dtype, device)
    }

    /// `positions[b][l]` (one stream: plain RoPE) → (cos, sin) `[batch, len, head_dim / 2]`.
    pub fn plain_tables(
        &self,
        positions: &[Vec<i64>],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let streams: Vec<[&[i64]; 3]> = positions.iter().map(|p| [p.as_slice(); 3]).collect();
        let (cos, sin) = self.host_tables(&streams);
        let len = positions.first().map_or(0, Vec::len);
        self.upload(cos, sin, (positions.len(), len), dtype, device)
    }

    fn upload(
        &self,
        cos: Vec<f32>,
        sin: Vec<f32>,
        (batch, len): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let shape = (batch, len, self.inv_freq.len());
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// The tables on the host, in f32, flat, for `positions[b][stream][l]`.
    // `l` indexes whichever of the three streams each slot uses, so it stays an index.
    #[allow(clippy::needless_range_loop)]
    fn host_tables(&self, positions: &[[&[i64]; 3]]) -> (Vec<f32>, Vec<f32>) {
        let batch = positions.len();
        let len = positions.first().map_or(0, |p| p[0].len());
        let half = self.inv_freq.len();
        let mut cos = vec![0f32; batch * len * half];
        let mut sin = vec![0f32; batch * len * half];
        // A prompt's positions are small integers, most repeated across the three streams
        // and the batch: each value's sin_cos once (8 prompts of ~1000 tokens were 0.5 M
        // sin_cos on the host while the GPU waited), where that is fewer.
        let (min, max) = positions
            .iter()
            .flat_map(|p| p.iter().copied().flatten())
            .fold((0i64, 0i64), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        let table: Option<Vec<(f32, f32)>> =
            (min >= 0 && (max as usize) < batch * len / 2).then(|| {
                (0..=max as usize)
                    .flat_map(|v| self.inv_freq.iter().map(move |f| (v as f32 * f).sin_cos()))
                    .collect()
            });
        let sin_cos = |p: i64, j: usize| match &table {
            Some(t) => t[p as usize * half + j],
            None => (p as f32 * self.inv_freq[j]).sin_cos(),
        };
        for (b, pos) in positions.iter().enumerate() {
            for l in 0..len {
                let row = (b * len + l) * half;
                for j in 0..half {
                    let (s, c) = sin_cos(pos[self.stream_of_slot[j]][l], j);
                    cos[row + j] = c;
                    sin[row + j] = s;
                }
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_layouts() {
        let section = [2, 3, 3];
        assert_eq!(
            RopeKind::MRope { section }.stream_of_slot(8),
            vec![0, 0, 1, 1, 1, 2, 2, 2]
        );
        // interleaved: slot%3 == 1 → h while < 3*3, slot%3 == 2 → w while < 3*3
        assert_eq!(
            RopeKind::InterleavedMRope { section }.stream_of_slot(8),
            vec![0, 1, 2, 0, 1, 2, 0, 1]
        );
        let real = RopeKind::InterleavedMRope {
            section: [24, 20, 20],
        }
        .stream_of_slot(64);
        assert_eq!(real.iter().filter(|&&s| s == 1).count(), 20);
        assert_eq!(real.iter().filter(|&&s| s == 2).count(), 20);
        // h takes slots 1, 4, …, 58 and w 2, 5, …, 59; t keeps 60..64
        assert_eq!(&real[58..], &[1, 2, 0, 0, 0, 0]);
        // Plain RoPE is M-RoPE with every slot on the first stream.
        assert_eq!(
            RopeKind::Plain.stream_of_slot(8),
            RopeKind::MRope { section: [4, 0, 0] }.stream_of_slot(8)
        );
    }

    #[test]
    fn plain_tables_equal_three_equal_streams() {
        let t = RopeTables::new(8, 10000.0, RopeKind::Plain);
        let pos = vec![vec![0i64, 0, 1, 2], vec![0, 1, 2, 3]];
        let three: Vec<[Vec<i64>; 3]> = pos
            .iter()
            .map(|p| [p.clone(), p.clone(), p.clone()])
            .collect();
        let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (c1, s1) = t.plain_tables(&pos, DType::F32, &Device::Cpu).unwrap();
        let (c3, s3) = t.tables(&three, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(c1.dims(), &[2, 4, 4]);
        assert_eq!((flat(c1), flat(s1)), (flat(c3), flat(s3)));
        let (cs, ss) = t.step_tables(&[5, 9], DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cs.dims(), &[2, 1, 4]);
        let (c, s) = t.step_rows(&[5, 9]);
        assert_eq!((flat(cs), flat(ss)), (c, s));
    }

    #[test]
    fn large_positions_stay_exact() {
        let t = RopeTables::new(8, 10000.0, RopeKind::MRope { section: [2, 1, 1] });
        let pos = vec![[vec![1050i64], vec![1050], vec![1050]]];
        let (cos, _) = t.tables(&pos, DType::BF16, &Device::Cpu).unwrap();
        let c: Vec<f32> = cos
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            (c[0] - 1050f32.cos()).abs() < 1e-2,
            "slot 0 must use position 1050, got {}",
            c[0]
        );
    }
}
