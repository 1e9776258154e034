//! Multimodal RoPE: the 3-D position ids of a prompt (transformers' `get_rope_index`),
//! the rotary tables built from them, and the 2-D rotary table of the vision tower.
//!
//! Positions and tables are computed in f32 on the host whatever the model dtype: in
//! bf16, integer positions above 256 are not representable (1050 becomes 1048).

use candle_core::{DType, Device, Result, Tensor};

/// Temporal, height and width positions of every prompt token, plus the rope delta
/// (`max position + 1 - length`) that continues the positions while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// `[3][len]`: t, h, w streams.
    pub positions: [Vec<i64>; 3],
    /// Added to the sequence length to get the next decode position.
    pub delta: i64,
}

/// transformers' `get_rope_index` for images (no video): text tokens count up on all three
/// streams; each run of image tokens gets a (t, h, w) grid starting at the current
/// position, and text resumes at `start + max(h, w) / merge`.
pub fn rope_index(
    input_ids: &[u32],
    image_token_id: u32,
    image_grids: &[[usize; 3]],
    merge: usize,
) -> RopeIndex {
    let mut positions: [Vec<i64>; 3] = std::array::from_fn(|_| Vec::with_capacity(input_ids.len()));
    let mut grids = image_grids.iter();
    let mut current: i64 = 0;
    let mut i = 0;
    while i < input_ids.len() {
        if input_ids[i] != image_token_id {
            for p in positions.iter_mut() {
                p.push(current);
            }
            current += 1;
            i += 1;
            continue;
        }
        let run_end = input_ids[i..]
            .iter()
            .position(|&t| t != image_token_id)
            .map_or(input_ids.len(), |n| i + n);
        let Some(&[t, h, w]) = grids.next() else {
            // More image tokens than grids: the caller checks counts; treat as text.
            for _ in i..run_end {
                for p in positions.iter_mut() {
                    p.push(current);
                }
                current += 1;
            }
            i = run_end;
            continue;
        };
        let (gh, gw) = (h / merge, w / merge);
        for tt in 0..t {
            for hh in 0..gh {
                for ww in 0..gw {
                    positions[0].push(current + tt as i64);
                    positions[1].push(current + hh as i64);
                    positions[2].push(current + ww as i64);
                }
            }
        }
        current += (h.max(w) / merge) as i64;
        i = run_end;
    }
    let max = positions
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    RopeIndex {
        delta: max + 1 - input_ids.len() as i64,
        positions,
    }
}

/// Rotary inverse frequencies `1 / base^(2i/dim)`, computed in f32 like transformers.
pub fn inv_freq(dim: usize, base: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Which of the t/h/w streams drives each of the `head_dim / 2` frequency slots.
pub fn mrope_stream_of_slot(section: [usize; 3], interleaved: bool, half: usize) -> Vec<usize> {
    if interleaved {
        // Qwen3-VL: slots 1,4,7,… go to h and 2,5,8,… to w, each up to 3·section; t keeps the rest.
        (0..half)
            .map(|j| match j % 3 {
                1 if j < section[1] * 3 => 1,
                2 if j < section[2] * 3 => 2,
                _ => 0,
            })
            .collect()
    } else {
        // Qwen2/2.5-VL: consecutive blocks of section[0], section[1], section[2] slots.
        let mut out = Vec::with_capacity(half);
        for (stream, &n) in section.iter().enumerate() {
            out.extend(std::iter::repeat_n(stream, n));
        }
        out.resize(half, 0);
        out
    }
}

/// Text rotary tables for `[batch][3][len]` positions: cos and sin of the `head_dim / 2`
/// frequencies, `[batch, len, head_dim / 2]` (the rotate-half layout repeats them for the
/// second half), cast to `dtype` as transformers casts them to the activation dtype.
pub struct MropeTables {
    inv_freq: Vec<f32>,
    stream_of_slot: Vec<usize>,
}

impl MropeTables {
    /// Tables for `head_dim`, `theta` and the mrope layout.
    pub fn new(head_dim: usize, theta: f64, section: [usize; 3], interleaved: bool) -> Self {
        let inv_freq = inv_freq(head_dim, theta);
        let stream_of_slot = mrope_stream_of_slot(section, interleaved, head_dim / 2);
        Self {
            inv_freq,
            stream_of_slot,
        }
    }

    /// The cos and sin rows of one decode step, `[positions.len(), head_dim / 2]` each,
    /// flat: after the prompt the three M-RoPE streams agree, so one position per
    /// sequence.
    pub fn step_rows(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let positions: Vec<[Vec<i64>; 3]> = positions
            .iter()
            .map(|&p| [vec![p], vec![p], vec![p]])
            .collect();
        self.host_tables(&positions)
    }

    /// `positions[b][s][l]` → (cos, sin) `[batch, len, head_dim / 2]`.
    pub fn tables(
        &self,
        positions: &[[Vec<i64>; 3]],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.host_tables(positions);
        let len = positions.first().map_or(0, |p| p[0].len());
        let shape = (positions.len(), len, self.inv_freq.len());
        let cos = Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// [`Self::tables`] on the host, in f32, flat.
    // `l` indexes whichever of the three streams each slot uses, so it stays an index.
    #[allow(clippy::needless_range_loop)]
    fn host_tables(&self, positions: &[[Vec<i64>; 3]]) -> (Vec<f32>, Vec<f32>) {
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
            .flat_map(|p| p.iter().flatten())
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

/// Where a patch sits in its image: row and column in patches, and the grid's height
/// and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchCoord {
    /// Row in patches.
    pub row: usize,
    /// Column in patches.
    pub col: usize,
    /// The image grid's height in patches.
    pub grid_h: usize,
    /// The image grid's width in patches.
    pub grid_w: usize,
}

/// Every patch of `grids` in the order the processor emits them: image by image, frame by
/// frame, 2×2 (merge × merge) block by block, then row-major inside the block.
pub fn patch_coordinates(grids: &[[usize; 3]], merge: usize) -> Vec<PatchCoord> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for ih in 0..merge {
                        for iw in 0..merge {
                            out.push(PatchCoord {
                                row: bh * merge + ih,
                                col: bw * merge + iw,
                                grid_h: h,
                                grid_w: w,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Vision 2-D rotary table: for each patch (in the merge-block order the processor emits),
/// cos and sin `[patches, head_dim]` in f32, with the height frequencies in the first
/// quarter, width in the second, repeated for the second half.
pub fn vision_rotary(
    grids: &[[usize; 3]],
    merge: usize,
    head_dim: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    const VISION_ROPE_THETA: f64 = 10_000.0;
    let inv = inv_freq(head_dim / 2, VISION_ROPE_THETA);
    let q = inv.len();
    let patches = patch_coordinates(grids, merge);
    // A value depends only on a row (or column) and a frequency: one table per coordinate,
    // gathered per patch on the device. Per patch on the host, a batch of 8 photos was
    // 1.3 M sin_cos and 20 MB to upload while the GPU waited.
    let extent = patches
        .iter()
        .map(|p| p.row.max(p.col) + 1)
        .max()
        .unwrap_or(0);
    let mut table_c = Vec::with_capacity(extent * q);
    let mut table_s = Vec::with_capacity(extent * q);
    for x in 0..extent {
        for f in &inv {
            let (s, c) = (x as f32 * f).sin_cos();
            table_c.push(c);
            table_s.push(s);
        }
    }
    let n = patches.len();
    let rows: Vec<u32> = patches.iter().map(|p| p.row as u32).collect();
    let cols: Vec<u32> = patches.iter().map(|p| p.col as u32).collect();
    let rows = Tensor::from_vec(rows, n, device)?;
    let cols = Tensor::from_vec(cols, n, device)?;
    let gather = |table: Vec<f32>| -> Result<Tensor> {
        let table = Tensor::from_vec(table, (extent, q), device)?;
        let h = table.index_select(&rows, 0)?;
        let w = table.index_select(&cols, 0)?;
        Tensor::cat(&[&h, &w, &h, &w], 1)
    };
    Ok((gather(table_c)?, gather(table_s)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_positions_count_up_with_zero_delta() {
        let r = rope_index(&[1, 2, 3, 4], 99, &[], 2);
        assert_eq!(r.positions[0], vec![0, 1, 2, 3]);
        assert_eq!(
            r.positions,
            [vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 1, 2, 3]]
        );
        assert_eq!(r.delta, 0);
    }

    #[test]
    fn image_grid_positions_and_delta() {
        // 2 text tokens, a 1×4×6 grid (merge 2 → 2×3 = 6 tokens), 1 text token
        let ids = [5, 6, 9, 9, 9, 9, 9, 9, 7];
        let r = rope_index(&ids, 9, &[[1, 4, 6]], 2);
        assert_eq!(r.positions[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5]);
        assert_eq!(r.positions[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5]);
        assert_eq!(r.positions[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5]);
        // text resumes at 2 + max(4, 6) / 2 = 5; delta = 5 + 1 - 9
        assert_eq!(r.delta, -3);
    }

    #[test]
    fn mrope_layouts() {
        assert_eq!(
            mrope_stream_of_slot([2, 3, 3], false, 8),
            vec![0, 0, 1, 1, 1, 2, 2, 2]
        );
        // interleaved: slot%3 == 1 → h while < 3*3, slot%3 == 2 → w while < 3*3
        assert_eq!(
            mrope_stream_of_slot([2, 3, 3], true, 8),
            vec![0, 1, 2, 0, 1, 2, 0, 1]
        );
        let real = mrope_stream_of_slot([24, 20, 20], true, 64);
        assert_eq!(real.iter().filter(|&&s| s == 1).count(), 20);
        assert_eq!(real.iter().filter(|&&s| s == 2).count(), 20);
        // h takes slots 1, 4, …, 58 and w 2, 5, …, 59; t keeps 60..64
        assert_eq!(&real[58..], &[1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn large_positions_stay_exact() {
        let t = MropeTables::new(8, 10000.0, [2, 1, 1], false);
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
