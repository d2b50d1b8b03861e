//! `kube-nft explain`: load manifests, ask the explain engine, print.

use std::io::{IsTerminal, Write};

use anyhow::bail;

use super::args::{ExplainArgs, ExplainCommand, Output};
use super::table;
use crate::cluster::Cluster;
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

/// Loads the manifests given with `-f`.
fn load(args: &ExplainArgs) -> anyhow::Result<Cluster> {
    if args.files.is_empty() {
        bail!("no manifests given: pass -f PATH (reading a live cluster is not supported yet)");
    }
    super::load_manifests(&args.files, args.strict)
}
