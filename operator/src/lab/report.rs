//! What a lab run found (pure): per-probe truth tables of kernel observations
//! next to the expectation and explain's verdict, the mismatches, the human
//! table and the JSON shape.
//!
//! JSON (`--output json`) extends the `explain matrix` shape:
//!
//! ```json
//! {"probes":[{"step":0,"protocol":"TCP","port":80,"to":"pod","family":"IPv4",
//!             "results":[{"from":"x/a","to":"y/b","allowed":true,"expected":true,"explain":true}]}],
//!  "mismatches":[{"step":0,"protocol":"TCP","port":80,"family":"IPv4","from":"x/a","to":"y/b",
//!                 "expected":false,"observed":true,"explain":false}],
//!  "disagreements":[{"step":0,"protocol":"TCP","port":80,"family":"IPv4","from":"x/a","to":"y/b",
//!                    "explain":false,"observed":true}],
//!  "enforcements":[{"step":null,"nodes":[{"node":"node-1","ops":9,"elements":31,"transactions":1,"elapsed":2.1}]}],
//!  "ok":true}
//! ```
//!
//! * `allowed` is what the kernel did; `expected` what the scenario (or, without
//!   one, explain) expects; `explain` explain's verdict, the reference semantics.
//! * A **mismatch** is kernel ≠ expected. A **disagreement** is kernel ≠ explain
//!   (a bug in the compiler/renderer or in explain); it is listed apart, whether
//!   or not the expectation held. `ok` is true iff both lists are empty.
//! * `family` is the address family probed (`IPv4`/`IPv6`): both ends' addresses
//!   of that family, and explain asked about exactly those addresses.
//! * A probe the lab cannot run (SCTP, or no pod has an address of its family)
//!   has `"skipped": "<reason>"` and no results. Pods without an address of the
//!   probe's family are listed in `"noAddress"`; pairs with one of them are not
//!   probed and not judged (no cell).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use super::scenario::Family;
use super::Protocol;
use crate::agent::AgentReport;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabReport {
    pub probes: Vec<ProbeReport>,
    pub mismatches: Vec<Mismatch>,
    pub disagreements: Vec<Disagreement>,
    /// Each enforcement: the initial one (`step: null`) and one per apply/delete.
    pub enforcements: Vec<Enforcement>,
    /// Declared ports nobody could listen on (SCTP), with the reason.
    #[serde(rename = "notServable", skip_serializing_if = "Vec::is_empty")]
    pub not_servable: Vec<String>,
    /// `apiserver` when a real API server, operator and agents carried the
    /// policy (`lab run --kubeconfig`); absent for the in-process agents.
    /// Each node's `elapsed` is then the event→kernel time: from the lab's
    /// first write to the kernel holding the change.
    #[serde(rename = "controlPlane", skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// 0-based index in the scenario's `steps` (or of the generated probe).
    pub step: usize,
    pub protocol: Protocol,
    pub port: u16,
    /// `pod`, `service`, `nodeport` or `loadbalancer`.
    pub to: String,
    /// `pod` or `outside`.
    pub from: String,
    pub family: Family,
    pub results: Vec<Cell>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Pods without an address of `family` (`namespace/name`): not probed.
    #[serde(rename = "noAddress", skip_serializing_if = "Vec::is_empty")]
    pub no_address: Vec<String>,
}

/// One ordered pod pair of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    /// The kernel's verdict: the destination answered with its own name.
    pub allowed: bool,
    pub expected: bool,
    pub explain: bool,
    /// The pod that answered (`namespace/name`): for a Service, the backend
    /// its node chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The source address the answering pod saw (the client's, or a node's
    /// when the connection was masqueraded).
    #[serde(rename = "sourceIp", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Why the connection failed (`refused`, `timed out`…) or who answered
    /// instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub step: usize,
    pub protocol: Protocol,
    pub port: u16,
    pub family: Family,
    pub from: String,
    pub to: String,
    pub expected: bool,
    pub observed: bool,
    pub explain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    pub step: usize,
    pub protocol: Protocol,
    pub port: u16,
    pub family: Family,
    pub from: String,
    pub to: String,
    pub explain: bool,
    pub observed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enforcement {
    /// The apply/delete step; `None` for the start of the run.
    pub step: Option<usize>,
    pub nodes: Vec<AgentReport>,
}

impl LabReport {
    /// Judges the probes: collects mismatches and disagreements.
    pub fn new(
        probes: Vec<ProbeReport>,
        enforcements: Vec<Enforcement>,
        not_servable: Vec<String>,
    ) -> LabReport {
        let mut mismatches = Vec::new();
        let mut disagreements = Vec::new();
        for p in &probes {
            for c in &p.results {
                if c.allowed != c.expected {
                    mismatches.push(Mismatch {
                        step: p.step,
                        protocol: p.protocol,
                        port: p.port,
                        family: p.family,
                        from: c.from.clone(),
                        to: c.to.clone(),
                        expected: c.expected,
                        observed: c.allowed,
                        explain: c.explain,
                    });
                }
                if c.allowed != c.explain {
                    disagreements.push(Disagreement {
                        step: p.step,
                        protocol: p.protocol,
                        port: p.port,
                        family: p.family,
                        from: c.from.clone(),
                        to: c.to.clone(),
                        explain: c.explain,
                        observed: c.allowed,
                    });
                }
            }
        }
        let ok = mismatches.is_empty() && disagreements.is_empty();
        LabReport {
            probes,
            mismatches,
            disagreements,
            enforcements,
            not_servable,
            control_plane: None,
            ok,
        }
    }

    /// Connections judged (skipped probes excluded).
    pub fn connections(&self) -> usize {
        self.probes.iter().map(|p| p.results.len()).sum()
    }

    /// One line: what ran and whether it held.
    pub fn summary(&self) -> String {
        let skipped = self.probes.iter().filter(|p| p.skipped.is_some()).count();
        let mut s = format!(
            "{} probe{}, {} connections: {} as expected, {} mismatch{}, {} disagreement{} with explain",
            self.probes.len(),
            plural(self.probes.len()),
            self.connections(),
            self.connections() - self.mismatches.len(),
            self.mismatches.len(),
            if self.mismatches.len() == 1 { "" } else { "es" },
            self.disagreements.len(),
            plural(self.disagreements.len()),
        );
        if skipped > 0 {
            let _ = write!(s, ", {skipped} skipped");
        }
        s.push_str(if self.ok { " — OK" } else { " — FAILED" });
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const BOLD_RED_BG: &str = "\x1b[1;37;41m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// The human report: one truth table per probe, the mismatches spelled out, a
/// legend and the summary line. `colour` only on a terminal.
pub fn render_table(report: &LabReport, colour: bool) -> String {
    let mut s = String::new();
    for p in &report.probes {
        let _ = writeln!(
            s,
            "step {}: {}/{} to {}{}",
            p.step,
            p.protocol,
            p.port,
            p.to,
            over(p.family)
        );
        if let Some(why) = &p.skipped {
            let _ = writeln!(s, "  skipped: {why}\n");
            continue;
        }
        if !p.no_address.is_empty() {
            let _ = writeln!(
                s,
                "  not probed (no {} address): {}",
                p.family,
                p.no_address.join(", ")
            );
        }
        render_grid(&mut s, p, colour);
        s.push('\n');
    }
    if !report.not_servable.is_empty() {
        for n in &report.not_servable {
            let _ = writeln!(s, "not served: {n}");
        }
        s.push('\n');
    }
    for m in &report.mismatches {
        let _ = writeln!(
            s,
            "MISMATCH step {} {}/{}{} {} -> {}: expected {}, kernel {}{}",
            m.step,
            m.protocol,
            m.port,
            over(m.family),
            m.from,
            m.to,
            verdict(m.expected),
            verdict(m.observed),
            detail_of(report, m.step, &m.from, &m.to),
        );
    }
    for d in &report.disagreements {
        let _ = writeln!(
            s,
            "DISAGREEMENT step {} {}/{}{} {} -> {}: explain says {}, kernel {}{}",
            d.step,
            d.protocol,
            d.port,
            over(d.family),
            d.from,
            d.to,
            verdict(d.explain),
            verdict(d.observed),
            detail_of(report, d.step, &d.from, &d.to),
        );
    }
    if let Some(line) = enforcement_line(&report.enforcements, report.control_plane.is_some()) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("rows: from, columns: to; ✓ connected, ✗ blocked, . same pod; ! not as expected, ? kernel differs from explain\n");
    s.push_str(&report.summary());
    s.push('\n');
    s
}

/// How policy reached the kernels: syncs, and the slowest one (the time until
/// every node enforced a change; through an API server, from the lab's write).
fn enforcement_line(enforcements: &[Enforcement], api_server: bool) -> Option<String> {
    let slowest = enforcements
        .iter()
        .flat_map(|e| &e.nodes)
        .map(|n| n.elapsed)
        .max()?;
    let elements: usize = enforcements
        .iter()
        .flat_map(|e| &e.nodes)
        .map(|n| n.elements)
        .sum();
    let (through, slowest_what) = if api_server {
        (" through the API server", "slowest event→kernel")
    } else {
        ("", "slowest sync")
    };
    Some(format!(
        "enforced {} time{}{through} on {} node{} ({elements} nftables objects changed, {slowest_what} {:.1} ms)",
        enforcements.len(),
        plural(enforcements.len()),
        enforcements.first().map_or(0, |e| e.nodes.len()),
        plural(enforcements.first().map_or(0, |e| e.nodes.len())),
        slowest.as_secs_f64() * 1000.0
    ))
}

/// ` over IPv6` for IPv6 probes; IPv4, the default, goes unsaid.
fn over(family: Family) -> &'static str {
    match family {
        Family::IPv4 => "",
        Family::IPv6 => " over IPv6",
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "blocked"
    }
}

fn detail_of(report: &LabReport, step: usize, from: &str, to: &str) -> String {
    report
        .probes
        .iter()
        .filter(|p| p.step == step)
        .flat_map(|p| &p.results)
        .find(|c| c.from == from && c.to == to)
        .and_then(|c| c.detail.as_ref())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

fn render_grid(s: &mut String, p: &ProbeReport, colour: bool) {
    let mut rows = BTreeSet::new();
    let mut columns = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for c in &p.results {
        rows.insert(c.from.as_str());
        columns.insert(c.to.as_str());
        cells.insert((c.from.as_str(), c.to.as_str()), c);
    }
    // Pod to pod: a square over every pod, so the diagonal shows.
    if p.to == "pod" && p.from == "pod" {
        rows.extend(columns.iter().copied());
        columns = rows.clone();
    }
    let first = rows.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let _ = write!(s, "  {:first$}", "");
    for n in &columns {
        let _ = write!(s, "  {n}");
    }
    s.push('\n');
    for from in &rows {
        let _ = write!(s, "  {from:<first$}");
        for to in &columns {
            let width = to.chars().count().max(2);
            let (mark, code) = match cells.get(&(*from, *to)) {
                // A pod is not probed against itself; a Service of the same
                // name as the client is (that is hairpin traffic).
                None if from == to => (".".to_string(), ""),
                None => ("-".to_string(), ""),
                Some(c) => {
                    let base = if c.allowed { "✓" } else { "✗" };
                    if c.allowed != c.expected {
                        (format!("{base}!"), BOLD_RED_BG)
                    } else if c.allowed != c.explain {
                        (format!("{base}?"), YELLOW)
                    } else if c.allowed {
                        (base.to_string(), GREEN)
                    } else {
                        (base.to_string(), RED)
                    }
                }
            };
            // Centre the mark under the column name.
            let len = mark.chars().count();
            let left = (width.saturating_sub(len)) / 2 + 2;
            let right = width.saturating_sub(len + left - 2);
            let _ = write!(s, "{}", " ".repeat(left));
            if colour && !code.is_empty() {
                let _ = write!(s, "{code}{mark}{RESET}");
            } else {
                s.push_str(&mark);
            }
            let _ = write!(s, "{}", " ".repeat(right));
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(from: &str, to: &str, allowed: bool, expected: bool, explain: bool) -> Cell {
        Cell {
            from: from.into(),
            to: to.into(),
            allowed,
            expected,
            explain,
            backend: allowed.then(|| to.to_string()),
            source_ip: None,
            detail: (!allowed).then(|| "timed out".to_string()),
        }
    }

    fn report(cells: Vec<Cell>) -> LabReport {
        report_over(Family::IPv4, cells)
    }

    fn report_over(family: Family, cells: Vec<Cell>) -> LabReport {
        LabReport::new(
            vec![ProbeReport {
                step: 2,
                protocol: Protocol::Tcp,
                port: 80,
                to: "pod".into(),
                from: "pod".into(),
                family,
                results: cells,
                skipped: None,
                no_address: Vec::new(),
            }],
            vec![],
            vec![],
        )
    }

    #[test]
    fn all_as_expected_is_ok() {
        let r = report(vec![
            cell("x/a", "x/b", true, true, true),
            cell("x/b", "x/a", false, false, false),
        ]);
        assert!(r.ok);
        let text = render_table(&r, false);
        assert!(text.contains("step 2: TCP/80 to pod"), "{text}");
        assert!(
            text.contains("2 connections: 2 as expected, 0 mismatches"),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("  x/")).collect();
        assert_eq!(rows, vec!["  x/a   .    ✓", "  x/b   ✗    ."], "{text}");
    }

    #[test]
    fn mismatches_and_disagreements_are_listed_apart() {
        let r = report(vec![
            cell("x/a", "x/b", true, false, false),
            cell("x/b", "x/a", false, false, true),
        ]);
        assert!(!r.ok);
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.mismatches[0].from, "x/a");
        assert_eq!(r.disagreements.len(), 2);
        let text = render_table(&r, false);
        assert!(text.contains("✓!"), "{text}");
        assert!(text.contains("✗?"), "{text}");
        assert!(
            text.contains("MISMATCH step 2 TCP/80 x/a -> x/b: expected blocked, kernel allowed"),
            "{text}"
        );
        assert!(text.contains("(timed out)"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["probes"][0]["results"][0]["explain"], false);
        assert_eq!(json["mismatches"][0]["observed"], true);
        assert_eq!(json["mismatches"][0]["step"], 2);
        assert_eq!(json["disagreements"][1]["explain"], true);
        assert!(json["probes"][0].get("skipped").is_none());
        assert!(json["probes"][0].get("noAddress").is_none());
        assert_eq!(json["probes"][0]["family"], "IPv4");
        assert_eq!(json["mismatches"][0]["family"], "IPv4");
    }

    #[test]
    fn ipv6_probes_say_so() {
        let mut r = report_over(
            Family::IPv6,
            vec![
                cell("x/a", "x/b", true, false, true),
                cell("x/b", "x/a", false, false, false),
            ],
        );
        r.probes[0].no_address = vec!["x/c".into()];
        let text = render_table(&r, false);
        assert!(text.contains("step 2: TCP/80 to pod over IPv6\n"), "{text}");
        assert!(text.contains("not probed (no IPv6 address): x/c"), "{text}");
        assert!(
            text.contains("MISMATCH step 2 TCP/80 over IPv6 x/a -> x/b"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["probes"][0]["family"], "IPv6");
        assert_eq!(json["probes"][0]["noAddress"][0], "x/c");
        assert_eq!(json["mismatches"][0]["family"], "IPv6");
    }

    #[test]
    fn colour_only_when_asked() {
        let r = report(vec![cell("x/a", "x/b", true, true, true)]);
        assert!(!render_table(&r, false).contains('\x1b'));
        assert!(render_table(&r, true).contains(GREEN));
    }
}
