//! `vlm devices`: the CPU and the CUDA GPUs this build can run on, with their memory.

use vlm_core::devices::{cuda_unavailable_reason, DeviceInfo};

fn gigabytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), |b| format!("{:.1} GB", b as f64 / 1e9))
}

/// Prints one line per device (or one JSON object with `--json`), and why CUDA is not
/// used when it is not.
pub fn print(json: bool) {
    let devices = vlm_core::devices();
    let reason = cuda_unavailable_reason();
    if json {
        let list: Vec<_> = devices.iter().map(to_json).collect();
        let out = serde_json::json!({
            "cuda_available": reason.is_none(),
            "cuda_unavailable_reason": reason,
            "devices": list,
        });
        println!("{out}");
        return;
    }
    for d in &devices {
        let cap = d
            .compute_capability
            .map(|(major, minor)| format!(", compute capability {major}.{minor}"))
            .unwrap_or_default();
        println!(
            "{:<8} {}  ({} total, {} free{cap})",
            d.device_arg(),
            d.name,
            gigabytes(d.total_memory),
            gigabytes(d.free_memory)
        );
    }
    if let Some(reason) = reason {
        println!("no CUDA: {reason}");
    }
}

fn to_json(d: &DeviceInfo) -> serde_json::Value {
    serde_json::json!({
        "index": d.index,
        "name": d.name,
        "kind": d.kind.as_str(),
        "total_memory": d.total_memory,
        "free_memory": d.free_memory,
        "compute_capability": d.compute_capability.map(|(major, minor)| format!("{major}.{minor}")),
    })
}
