//! A transaction as data: the ordered operations one netlink batch carries.
//!
//! `diff` produces a [`Batch`], the netlink layer sends it as one atomic
//! transaction, and tests assert on its contents ("a relabel only touches set
//! elements"). Order matters and is the producer's job: objects are created before
//! anything references them and deleted after nothing does.

use crate::model::{Chain, ElemKey, ElemValue, Family, Rule, Set};

/// The operations of one transaction on one table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub family: Family,
    pub table: String,
    pub ops: Vec<Op>,
}

/// One operation. Headers (`AddSet`, `AddChain`) carry no elements or rules: those
/// come as their own operations so a batch can be split and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the table if absent (never fails when it exists).
    AddTable {
        comment: Option<String>,
    },
    DeleteTable,
    /// Create a set from its header; `elements` of the carried set are ignored.
    AddSet(Set),
    DeleteSet(String),
    /// Remove every element of a set.
    FlushSet(String),
    AddElements {
        set: String,
        elements: Vec<(ElemKey, ElemValue)>,
    },
    DeleteElements {
        set: String,
        keys: Vec<ElemKey>,
    },
    /// Create a chain from its header; `rules` of the carried chain are ignored.
    AddChain(Chain),
    /// Remove every rule of a chain.
    FlushChain(String),
    DeleteChain(String),
    /// Append a rule to a chain.
    AddRule {
        chain: String,
        rule: Rule,
    },
}

impl Batch {
    pub fn new(family: Family, table: impl Into<String>) -> Self {
        Batch {
            family,
            table: table.into(),
            ops: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of netlink messages the batch turns into (one per element, rule and
    /// header), the unit in which a large load is split into chunks.
    pub fn message_count(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 1,
            })
            .sum()
    }
}
