//! The human truth table: rows are sources, columns destinations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::policy::Matrix;

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

pub fn render(m: &Matrix, colour: bool) -> String {
    let mut s = String::new();
    for probe in &m.probes {
        let mut names = BTreeSet::new();
        let mut cells = BTreeMap::new();
        for r in &probe.results {
            names.insert(r.from.as_str());
            names.insert(r.to.as_str());
            cells.insert((r.from.as_str(), r.to.as_str()), r.allowed);
        }
        let title = format!("{}/{}", probe.protocol, probe.port);
        let first = names
            .iter()
            .map(|n| n.chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0);
        let _ = write!(s, "{title:<first$}");
        for n in &names {
            let _ = write!(s, "  {n}");
        }
        s.push('\n');
        for from in &names {
            let _ = write!(s, "{from:<first$}");
            for to in &names {
                let width = to.chars().count();
                let (mark, code) = match cells.get(&(*from, *to)) {
                    _ if from == to => (".", ""),
                    Some(true) => ("✓", GREEN),
                    Some(false) => ("✗", RED),
                    None => ("-", ""),
                };
                let pad = " ".repeat(width.saturating_sub(1) / 2 + 2);
                let tail = " ".repeat(width - 1 - width.saturating_sub(1) / 2);
                if colour && !code.is_empty() {
                    let _ = write!(s, "{pad}{code}{mark}{RESET}{tail}");
                } else {
                    let _ = write!(s, "{pad}{mark}{tail}");
                }
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str("rows: from, columns: to; ✓ allowed, ✗ dropped, . same pod\n");
    s
}
