//! `kube-nft explain`: load manifests (or read the live cluster), ask the
//! explain engine, print.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};

use super::args::{ExplainArgs, ExplainCommand, Output};
use super::table;
use crate::cluster::Cluster;
use crate::kubeapi::snapshot;
use crate::policy::explain::declared_ports;
use crate::policy::{explain_flow, explain_pod, matrix_for, Flow};

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let cluster = load(&args)?;
    let mut out = std::io::stdout().lock();
    match args.what {
        ExplainCommand::Pod { pod, output } => {
            let report = explain_pod(&cluster, &pod)?;
            match output {
                Output::Text => writeln!(out, "{report}")?,
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
            }
        }
        ExplainCommand::Flow {
            from,
            to,
            port,
            output,
        } => {
            let flow = Flow {
                from,
                to,
                protocol: port.protocol,
                port: port.port,
            };
            let e = explain_flow(&cluster, &flow)?;
            match output {
                Output::Text => writeln!(out, "{e}")?,
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?,
            }
        }
        ExplainCommand::Service {
            service,
            nat,
            output,
        } => {
            let with_slices = crate::service::with_synthesized_slices(&cluster);
            let report = crate::service::explain_service(&with_slices, &service, &nat.config())
                .map_err(anyhow::Error::msg)?;
            match output {
                Output::Text => write!(out, "{report}")?,
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
            }
        }
        ExplainCommand::Matrix {
            ports,
            family,
            output,
        } => {
            let probes: Vec<_> = if ports.is_empty() {
                declared_ports(&cluster)
            } else {
                ports.iter().map(|p| (p.protocol, p.port)).collect()
            };
            if probes.is_empty() {
                bail!("no pod declares a container port; name ports to probe with --port PORT[/PROTOCOL]");
            }
            let m = matrix_for(&cluster, &probes, family);
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string(&m)?)?,
                Output::Text => {
                    let colour = std::io::stdout().is_terminal();
                    write!(out, "{}", table::render(&m, colour))?;
                }
            }
        }
    }
    Ok(())
}

/// The cluster to explain: the manifests given with `-f`, else the live
/// cluster.
fn load(args: &ExplainArgs) -> anyhow::Result<Cluster> {
    if args.files.is_empty() {
        return read_live(args);
    }
    // Checked here, not by clap: clap misses the conflict when one flag is
    // given before the subcommand and the other after it.
    if args.kube.kubeconfig.is_some() {
        bail!("-f and --kubeconfig exclude each other: -f explains manifests, --kubeconfig a live cluster");
    }
    super::load_manifests(&args.files, args.strict)
}

/// One read of the cluster `--kubeconfig` (or the inferred config) names.
fn read_live(args: &ExplainArgs) -> anyhow::Result<Cluster> {
    let source = match &args.kube.kubeconfig {
        Some(path) => format!("reading the live cluster (--kubeconfig {})", path.display()),
        None => "no -f PATH given, so reading the live cluster".to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let snapshot = rt
        .block_on(async {
            let client = args.kube.client().await?;
            snapshot::cluster(&client).await
        })
        .context(source)?;
    report(&snapshot.problems, args.strict)?;
    Ok(snapshot.cluster)
}

/// Reports skipped objects on stderr, worded as `load_manifests` words
/// skipped documents; with `strict`, the first one is the error instead.
fn report(problems: &[snapshot::Problem], strict: bool) -> anyhow::Result<()> {
    if let (true, Some(p)) = (strict, problems.first()) {
        bail!("{p}");
    }
    for p in problems {
        eprintln!("error (skipped): {p}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn explain_args(argv: &[&str]) -> Result<ExplainArgs, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Explain(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn kubeconfig_may_come_before_or_after_the_subcommand() {
        for argv in [
            &[
                "kube-nft",
                "explain",
                "--kubeconfig",
                "k.yaml",
                "pod",
                "a/b",
            ][..],
            &[
                "kube-nft",
                "explain",
                "pod",
                "a/b",
                "--kubeconfig",
                "k.yaml",
            ][..],
        ] {
            let a = explain_args(argv).unwrap();
            assert!(a.files.is_empty());
            assert_eq!(
                a.kube.kubeconfig.as_deref(),
                Some(std::path::Path::new("k.yaml"))
            );
        }
    }

    #[test]
    fn without_f_nor_kubeconfig_the_args_parse_and_with_both_load_fails() {
        let a = explain_args(&["kube-nft", "explain", "matrix", "--output", "json"]).unwrap();
        assert!(a.files.is_empty() && a.kube.kubeconfig.is_none());
        for argv in [
            &[
                "kube-nft",
                "explain",
                "-f",
                "m/",
                "service",
                "a/b",
                "--kubeconfig",
                "k",
            ][..],
            &[
                "kube-nft",
                "explain",
                "service",
                "a/b",
                "--kubeconfig",
                "k",
                "-f",
                "m/",
            ][..],
        ] {
            // Fails before reading either: neither path exists.
            let err = explain_args(argv)
                .map_err(anyhow::Error::from)
                .and_then(|a| load(&a));
            let err = err.unwrap_err().to_string();
            assert!(err.contains("exclude each other"), "{argv:?}: {err}");
        }
    }

    #[test]
    fn strict_makes_the_first_skipped_object_the_error() {
        let problems = vec![snapshot::Problem {
            object: "Pod shop/x".into(),
            field: Some("status.podIP".into()),
            message: "bad".into(),
        }];
        assert!(report(&problems, false).is_ok());
        let err = report(&problems, true).unwrap_err();
        assert_eq!(err.to_string(), "Pod shop/x: field status.podIP: bad");
        assert!(report(&[], true).is_ok());
    }
}
