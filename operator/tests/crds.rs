//! `deploy/crds/` must be exactly what `kube-nft crds --write` produces, and
//! `kube-nft crds` must print the same CRDs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kube_nft_crds::manifests;

const REGENERATE: &str = "run `cargo run -p kube-nft -- crds --write deploy/crds`";

fn deploy_crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("deploy/crds is missing ({e}): {REGENERATE}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

#[test]
fn deploy_crds_is_current() {
    let dir = deploy_crds();
    let want = manifests::files();
    for (name, content) in &want {
        let have = fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            &have == content,
            "deploy/crds is stale ({name} differs from what the code generates): {REGENERATE}"
        );
    }
    let mut expected: Vec<String> = want.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(
        yaml_files(&dir),
        expected,
        "deploy/crds holds files the code no longer generates: {REGENERATE}"
    );
}

fn kube_nft(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nft"))
        .args(args)
        .output()
        .expect("run kube-nft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kube-nft {args:?} failed: {stderr}");
    out
}

#[test]
fn crds_prints_every_crd_once() {
    let out = kube_nft(&["crds"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, manifests::multi_document());
    assert_eq!(
        stdout,
        String::from_utf8(kube_nft(&["crds"]).stdout).unwrap()
    );
    let kinds: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  name: ") && l.ends_with(".kubenft.io"))
        .collect();
    let want = [
        "  name: addresssetshards.kubenft.io",
        "  name: nodepolicyshares.kubenft.io",
    ];
    assert_eq!(kinds, want, "{stdout}");
}

#[test]
fn write_regenerates_and_removes_only_stale_generated_files() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crds-write");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let stale = format!("{}\nkind: CustomResourceDefinition\n", manifests::HEADER);
    fs::write(dir.join("olds.kubenft.io.yaml"), stale).unwrap();
    fs::write(dir.join("mine.yaml"), "kind: ConfigMap\n").unwrap();

    kube_nft(&["crds", "--write", dir.to_str().unwrap()]);

    for (name, content) in manifests::files() {
        assert_eq!(
            fs::read_to_string(dir.join(&name)).unwrap(),
            content,
            "{name}"
        );
    }
    assert!(
        !dir.join("olds.kubenft.io.yaml").exists(),
        "stale generated file kept"
    );
    assert!(
        dir.join("mine.yaml").exists(),
        "a file we did not write was removed"
    );
}
