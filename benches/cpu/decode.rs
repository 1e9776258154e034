//! Decoding an encoded photo into RGB through `Image::from_bytes`, the path every file,
//! byte buffer and Python `bytes` takes (format sniffing, limits, EXIF orientation).

use std::hint::black_box;

use criterion::Criterion;
use vlm_core::Image;

use crate::photo;

pub fn bench(c: &mut Criterion) {
    let photo = photo::synthetic_photo();
    let mut group = c.benchmark_group("decode");
    for (format, bytes) in [("jpeg", photo::jpeg(&photo)), ("png", photo::png(&photo))] {
        let name = format!("{format}_{}x{}", photo::WIDTH, photo::HEIGHT);
        group.bench_function(name, |b| {
            b.iter(|| Image::from_bytes(black_box(&bytes)).expect("decodes"))
        });
    }
    group.finish();
}
