//! Talking to the kernel: [`Batch`]es as atomic nf_tables transactions over
//! netlink, and read-back of a table into the model.
//!
//! Built on libnftnl (through `nftnl::nftnl_sys`) for message attributes and on
//! `mnl` for the socket; the safe API of the `nftnl` crate lacks most of what the
//! model needs (concatenations, intervals, maps, NAT registers, comments, dumps).
//!
//! ```text
//! model::Rule ──encode_expr──► Vm ──sys──► nftnl_expr ─┐
//! model::Set  ──encode_set───► nftnl_set / elements ───┼─► EncodedBatch (Send) ─► Conn::send
//!                                                      │
//! Conn::read_table ◄──dump── nftnl objects ◄── kernel ─┘   (decode: Vm → Rule)
//! ```
//!
//! Module map: `consts` (kernel numbers), `types` (value/field/type encodings),
//! `vm` (kernel expressions as data), `encode_expr`/`decode` (statements ↔ VM,
//! pure), `encode_set` (sets and elements), `encode` (batch framing), `sys` (the
//! only `unsafe`: libnftnl objects), `socket` (the connection), `dump` (read-back),
//! `udata` (comment TLVs), `conntrack*` (ctnetlink: list and delete conntrack
//! entries; plain bytes over `mnl`, no `unsafe`).

pub mod conntrack;
mod conntrack_msg;
mod conntrack_types;
mod consts;
mod decode;
mod dump;
mod encode;
mod encode_expr;
mod encode_set;
mod socket;
mod sys;
mod types;
mod udata;
mod vm;

pub use encode::EncodedBatch;

/// Move the calling thread into the network namespace `ns` (an open
/// `/run/netns/NAME` or `/proc/PID/ns/net`). For dedicated threads only: the
/// thread's later sockets and routes live in that namespace.
pub fn enter_netns(ns: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    socket::setns(ns)
}
pub use socket::{Applied, Conn};

use std::collections::BTreeMap;

use crate::batch::{Batch, Op};
use crate::model::{Set, Table};

/// Errors of the netlink layer. Each says which object or op it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The batch cannot be encoded (invalid model data); nothing was sent.
    #[error("op {op} ({what}): {msg}")]
    Encode {
        op: usize,
        what: String,
        msg: String,
    },
    /// The kernel rejected op `op` of the batch; the transaction applied nothing.
    #[error("op {op} ({what}): {message}")]
    Rejected {
        op: usize,
        what: String,
        errno: i32,
        message: std::io::Error,
    },
    /// Every op was accepted but the commit failed; nothing was applied.
    #[error("commit failed: {message}")]
    Commit { errno: i32, message: std::io::Error },
    /// ACKs were lost and the generation check says the batch did not commit.
    #[error("{0}")]
    Uncertain(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A rule in the kernel the model cannot express.
    #[error("chain {chain}, rule handle {handle}: cannot decode: {msg}")]
    UnknownRule {
        chain: String,
        handle: u64,
        msg: String,
    },
    #[error("read-back: {0}")]
    Decode(String),
}

impl Error {
    /// The errno the kernel answered, for rejected ops and failed commits.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Rejected { errno, .. } | Error::Commit { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The index of the op the kernel (or the encoder) refused.
    pub fn op_index(&self) -> Option<usize> {
        match self {
            Error::Rejected { op, .. } | Error::Encode { op, .. } => Some(*op),
            _ => None,
        }
    }

    fn unknown_set(&self) -> Option<String> {
        let Error::Encode { msg, .. } = self else {
            return None;
        };
        let rest = msg.strip_prefix(encode_expr::UNKNOWN_SET)?;
        let quoted = rest.split(':').next()?;
        Some(quoted.trim_matches('"').to_string())
    }
}

/// Encode `batch` without a connection. Sets it references but does not add are
/// looked up in `known` (e.g. the committed table the caller keeps in memory).
pub fn encode_batch(batch: &Batch, known: Option<&Table>) -> Result<EncodedBatch, Error> {
    struct FromTable<'a>(Option<&'a BTreeMap<String, Set>>);
    impl encode_expr::SetShapes for FromTable<'_> {
        fn header(&self, name: &str) -> Option<&Set> {
            self.0?.get(name)
        }
    }
    encode::encode(batch, &FromTable(known.map(|t| &t.sets)))
}

/// The batch that makes the kernel hold exactly `table`: create-if-absent, delete,
/// then create everything (sets before chains, all chains before rules so jumps
/// resolve). Atomic: readers see the old table or the new one.
pub fn replace_table_batch(table: &Table) -> Batch {
    let mut b = Batch::new(table.family, table.name.clone());
    b.ops.push(Op::AddTable { comment: None });
    b.ops.push(Op::DeleteTable);
    b.ops.extend(load_table_ops(table));
    b
}

/// The ops that create `table` and everything in it, in dependency order: set
/// headers, chain headers, then elements (verdict maps name chains), then rules
/// (rules name sets and chains).
pub fn load_table_ops(table: &Table) -> Vec<Op> {
    let mut ops = vec![Op::AddTable {
        comment: table.comment.clone(),
    }];
    for s in table.sets.values() {
        let mut header = s.clone();
        header.elements.clear();
        ops.push(Op::AddSet(header));
    }
    for c in table.chains.values() {
        let mut header = c.clone();
        header.rules.clear();
        ops.push(Op::AddChain(header));
    }
    for s in table.sets.values() {
        if !s.elements.is_empty() {
            ops.push(Op::AddElements {
                set: s.name.clone(),
                elements: s.elements.clone().into_iter().collect(),
            });
        }
    }
    for c in table.chains.values() {
        for r in &c.rules {
            ops.push(Op::AddRule {
                chain: c.name.clone(),
                rule: r.clone(),
            });
        }
    }
    ops
}
