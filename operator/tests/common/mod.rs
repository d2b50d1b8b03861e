//! Helpers shared by the integration tests that run the `kube-nft` binary.

use std::process::Command;

/// Runs `kube-nft ARGS…` and returns its exit code, stdout and stderr.
pub fn kube_nft(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}
