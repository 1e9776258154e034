//! Multimodal RoPE: the 3-D position ids of a prompt (transformers' `get_rope_index`),
//! which the decoder's M-RoPE tables (crate::decoder::RopeTables) turn into angles, and
//! the 2-D rotary table of the vision tower.

use candle_core::{Device, Result, Tensor};

use crate::decoder::inv_freq;

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
}
