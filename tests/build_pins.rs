//! Pins that exist for a side effect a test would not otherwise see.
//!
//! `gemm = "=0.19.0"` in Cargo.toml is not used by our code: it is there so
//! that Cargo's feature unification switches on `x86-v4` (the AVX-512 f32
//! kernels) inside the copy of gemm that candle-core calls. If candle moves to
//! another gemm, the lock file holds two copies, ours stops reaching candle's,
//! and CPU matrix products lose the AVX-512 kernels without any error.

use std::path::Path;

/// `(name, version, dependencies)` of every package in the lock file.
fn locked_packages() -> Vec<(String, String, Vec<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    let text = std::fs::read_to_string(&path).unwrap();
    let lock: toml::Value = toml::from_str(&text).unwrap();
    let packages = lock.get("package").and_then(|p| p.as_array()).expect("Cargo.lock has packages");
    packages
        .iter()
        .map(|p| {
            let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let deps = p
                .get("dependencies")
                .and_then(|d| d.as_array())
                .map(|d| d.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            (field("name"), field("version"), deps)
        })
        .collect()
}

/// The exact version Cargo.toml pins gemm to.
fn pinned_gemm() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spec = &manifest["dependencies"]["gemm"];
    let version = spec.get("version").and_then(|v| v.as_str()).expect("gemm has a version");
    let features = spec.get("features").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(
        features.iter().any(|f| f.as_str() == Some("x86-v4")),
        "the gemm dependency exists only to enable x86-v4; it no longer does"
    );
    version.strip_prefix('=').expect("gemm is pinned exactly (=x.y.z)").to_string()
}

#[test]
fn the_gemm_pin_reaches_the_copy_candle_uses() {
    let pinned = pinned_gemm();
    let packages = locked_packages();
    let gemms: Vec<&String> = packages.iter().filter(|(n, _, _)| n == "gemm").map(|(_, v, _)| v).collect();
    assert_eq!(
        gemms,
        vec![&pinned],
        "one gemm in the lock, the pinned one: candle-core moved to another gemm; \
         pin that version instead so its AVX-512 kernels stay on"
    );
    let (_, _, candle_deps) =
        packages.iter().find(|(n, _, _)| n == "candle-core").expect("candle-core is locked");
    assert!(
        candle_deps.iter().any(|d| d == "gemm" || d == &format!("gemm {pinned}")),
        "candle-core no longer depends on gemm {pinned}: {candle_deps:?}"
    );
}
