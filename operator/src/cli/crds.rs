//! `kube-nft crds`: the CustomResourceDefinitions of cluster mode, printed as
//! one YAML stream or written as `deploy/crds/` (a test keeps that copy current).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kube_nft_crds::manifests;

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one file per CRD and a kustomization.yaml into DIR instead of
    /// printing them (DIR is created if missing; generated files that are no
    /// longer produced are removed).
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

pub fn run(args: CrdsArgs) -> anyhow::Result<()> {
    match args.write {
        Some(dir) => write_dir(&dir),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(manifests::multi_document().as_bytes())?;
            Ok(out.flush()?)
        }
    }
}

fn write_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = manifests::files();
    for (name, content) in &files {
        let path = dir.join(name);
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    // A renamed CRD leaves its old file behind; remove it, but never a file
    // we did not generate (DIR may hold other manifests).
    let listing = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in listing {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let ours =
            fs::read_to_string(&path).is_ok_and(|c| c.starts_with(manifests::GENERATED_PREFIX));
        if ours && name.ends_with(".yaml") && !files.iter().any(|(f, _)| f == name) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            eprintln!("removed {}", path.display());
        }
    }
    eprintln!("wrote {} files to {}", files.len(), dir.display());
    Ok(())
}
