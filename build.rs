//! Build script: with the `cuda` feature, compiles the crate's own CUDA kernels to PTX with nvcc
//! (the same compiler candle's kernels need). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

/// The header every kernel includes (`#include "cuda_common.cuh"`), found through `-I`.
const INCLUDE_DIR: &str = "src/kernels/cuda";

const KERNELS: &[&str] = &[
    "src/model/weights/cuda_dequant.cu",
    "src/kernels/cuda/cuda_dropout.cu",
    "src/train/ops/cuda_attn.cu",
    "src/train/ops/cuda_fused.cu",
    "src/kernels/cuda/cuda_adamw.cu",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // PTX for the lowest capability asked for runs on every newer card (the driver compiles it).
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or_else(|| {
            println!("cargo::warning=CUDA_COMPUTE_CAP not set: building the crate's kernels for compute 7.5");
            75
        });
    println!("cargo::rerun-if-changed={INCLUDE_DIR}/cuda_common.cuh");
    for src in KERNELS {
        println!("cargo::rerun-if-changed={src}");
        let stem = PathBuf::from(src).file_stem().and_then(|s| s.to_str()).unwrap_or("kernel").to_string();
        let ptx = out_dir.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-std=c++17",
                &format!("--gpu-architecture=compute_{cap}"),
                "-I",
                INCLUDE_DIR,
                "-o",
            ])
            .arg(&ptx)
            .arg(src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{nvcc} failed on {src} ({s})"),
            Err(e) => panic!("cannot run {nvcc} for {src}: {e} (set NVCC or put nvcc on PATH)"),
        }
    }
}
