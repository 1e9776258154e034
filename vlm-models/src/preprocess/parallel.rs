//! Row-parallel loops for the CPU work before the GPU gets an image (resizing,
//! normalising, patchifying): one 1024×768 photo took 68 ms of preprocessing on one core
//! of an H200 host while its vision tower took 89 ms (run 14), so a photo's rows are
//! split over the cores of rayon's global pool. The pool's threads are started once per
//! process; several requests preprocessed at once share them instead of each spawning a
//! thread per core.

use rayon::prelude::*;

/// Elements below which a chunk is not worth handing to another thread: a model serving
/// several requests at once already keeps the cores busy, so small images stay on their
/// caller's thread (a 1024×768 photo's resize passes are ~2.4 M elements).
const MIN_ELEMENTS_PER_CHUNK: usize = 1 << 18;

/// Chunks for `elements` elements: one per pool thread, at most one per
/// [`MIN_ELEMENTS_PER_CHUNK`].
fn chunks_for(elements: usize) -> usize {
    rayon::current_num_threads()
        .min(elements / MIN_ELEMENTS_PER_CHUNK)
        .max(1)
}

/// Calls `f(first_row, chunk)` on consecutive chunks of whole rows of `row_len` elements
/// of `out`, in parallel; `f` sees each row exactly once.
pub fn for_row_chunks<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    for_row_chunks_weighted(out, row_len, 1, f);
}

/// [`for_row_chunks`] for elements that each cost `cost` times a plain pass's (e.g. a
/// downscaling resize reads a wide window per output value): the chunk count follows the
/// work, not the output size. A 1024×768 photo shrunk to BLIP-2's 224×224 writes only 150 k
/// values per pass, and counted as plain elements its resize ran on one thread.
pub fn for_row_chunks_weighted<T: Send>(
    out: &mut [T],
    row_len: usize,
    cost: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len() / row_len.max(1);
    let chunks = chunks_for(out.len().saturating_mul(cost.max(1))).min(rows.max(1));
    if chunks <= 1 {
        f(0, out);
        return;
    }
    let rows_per_chunk = rows.div_ceil(chunks);
    out.par_chunks_mut(rows_per_chunk * row_len)
        .enumerate()
        .for_each(|(i, chunk)| f(i * rows_per_chunk, chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_visited_once_with_its_index() {
        // The last two are large enough to be split across threads.
        for (rows, len) in [
            (0, 3),
            (1, 3),
            (17, 3),
            (1037, 3),
            (3, 200_000),
            (1037, 1000),
        ] {
            let mut v = vec![0usize; rows * len];
            for_row_chunks(&mut v, len, |first, chunk| {
                for (r, row) in chunk.chunks_mut(len).enumerate() {
                    for x in row {
                        *x += first + r + 1;
                    }
                }
            });
            let want: Vec<usize> = (0..rows)
                .flat_map(|r| std::iter::repeat_n(r + 1, len))
                .collect();
            assert_eq!(v, want, "{rows} rows of {len}");
        }
    }

    #[test]
    fn large_work_runs_on_the_global_pool() {
        let mut v = vec![0u8; 64 * MIN_ELEMENTS_PER_CHUNK];
        let pool_threads = std::sync::Mutex::new(std::collections::HashSet::new());
        for_row_chunks(&mut v, 1024, |_, _| {
            pool_threads
                .lock()
                .unwrap()
                .insert(rayon::current_thread_index().is_some());
        });
        if rayon::current_num_threads() > 1 {
            // Chunks ran on the pool's workers (a spawned scoped thread has no pool index).
            assert!(pool_threads.into_inner().unwrap().contains(&true));
        }
    }
}
