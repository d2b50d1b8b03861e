//! Shared by the e2e suites: the `kube-nft` binary they drive.
//!
//! `KUBE_NFT_BIN` when set; otherwise `cargo build -p kube-nft --bin kube-nft`
//! once (same profile as the test, same target directory, a no-op when up to
//! date), taking the executable path from cargo's JSON messages. e2e does not
//! depend on the kube-nft package (and a dependency would not expose
//! `CARGO_BIN_EXE_kube-nft` anyway), so this is how the binary is always
//! fresh, whichever of `cargo test -p e2e` or `cargo test --workspace` runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e lives inside the workspace")
        .to_path_buf()
}

pub fn kube_nft() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KUBE_NFT_BIN") {
            return PathBuf::from(bin);
        }
        build_kube_nft()
    })
}

/// `cargo build -p kube-nft` with this test binary's profile; returns the
/// executable cargo reports.
fn build_kube_nft() -> PathBuf {
    // target/<profile>/deps/netpol_conformance-HASH
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let profile = match profile_dir.as_str() {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "kube-nft",
            "--bin",
            "kube-nft",
            "--message-format=json",
            "--profile",
            &profile,
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {} build: {e}", cargo.display()));
    assert!(
        out.status.success(),
        "`cargo build -p kube-nft` failed ({}); set KUBE_NFT_BIN to use a prebuilt binary",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kube-nft")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no kube-nft executable")
}
