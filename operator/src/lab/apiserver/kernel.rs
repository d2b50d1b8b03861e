//! Watching what a lab node's kernel enforces, from outside its agent: the
//! lab reads the agent's table in the node's network namespace and compares
//! it with the table the in-process agent would have committed for the same
//! objects. Equal means the whole path (API server, operator, agent) carried
//! the change into the kernel.
//!
//! Reads are cheap when nothing happened: one generation-id request, and the
//! table only when the generation moved.

use std::path::Path;

use anyhow::Context;
use nft::netlink::Conn;
use nft::Table;

use crate::render::{TABLE_FAMILY, TABLE_NAME};

/// One node's kernel, as last read.
pub struct KernelWatch {
    pub node: String,
    conn: Conn,
    generation: Option<u32>,
    table: Option<Table>,
}

impl KernelWatch {
    pub fn open(node: &str, netns: &Path) -> anyhow::Result<KernelWatch> {
        let conn = Conn::open_in_netns(netns).with_context(|| {
            format!(
                "node {node}: opening netlink in network namespace {}",
                netns.display()
            )
        })?;
        Ok(KernelWatch {
            node: node.to_string(),
            conn,
            generation: None,
            table: None,
        })
    }

    /// The kernel's ruleset generation and our table now (read again only
    /// when the generation moved since the last read).
    pub fn read(&mut self) -> anyhow::Result<(u32, Option<&Table>)> {
        let node = &self.node;
        let now = self
            .conn
            .generation()
            .with_context(|| format!("node {node}: reading the ruleset generation"))?;
        if self.generation != Some(now) {
            self.conn.forget(TABLE_FAMILY, TABLE_NAME);
            self.table = self
                .conn
                .read_table(TABLE_FAMILY, TABLE_NAME)
                .with_context(|| format!("node {node}: reading table {TABLE_NAME}"))?;
            // A commit between the two requests shows as a moved generation
            // next time, and the table is read again then.
            self.generation = Some(now);
        }
        Ok((now, self.table.as_ref()))
    }
}

/// The operations still between what the kernel holds and `want` (empty:
/// the kernel enforces `want`).
pub fn missing(kernel: Option<&Table>, want: &Table) -> nft::Batch {
    nft::diff::diff(kernel, want)
}

/// A short description of a non-empty batch: its size and first operation.
pub fn describe(batch: &nft::Batch) -> String {
    let first = batch
        .ops
        .first()
        .map(|op| {
            let text = format!("{op:?}");
            let cut: String = text.chars().take(160).collect();
            if cut.len() < text.len() {
                format!("{cut}…")
            } else {
                cut
            }
        })
        .unwrap_or_default();
    format!(
        "{} operation{} to go, first: {first}",
        batch.ops.len(),
        if batch.ops.len() == 1 { "" } else { "s" }
    )
}
