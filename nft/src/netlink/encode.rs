//! `Batch` → one buffer of netlink messages framed by BATCH_BEGIN/BATCH_END.
//!
//! The result is plain bytes plus a sequence-number → op map, so it is `Send` and
//! can be built on any thread; only sending needs the connection's thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use nftnl::nftnl_sys as sys;

use super::consts::*;
use super::encode_expr::{check_name, check_str, encode_rule, unknown_set, SetShapes};
use super::encode_set::{elem_specs, set_header, ElemSpec};
use super::sys::{expr_of, MsgWriter, NlChain, NlRule, NlSet, NlTable, Payload};
use super::udata;
use super::Error;
use crate::batch::{Batch, Op};
use crate::model::{BaseChain, ChainPolicy, ChainType, Family, Hook, Set};

/// Element messages are cut at this many bytes (the kernel takes larger ones; this
/// keeps each well inside the message scratch buffer).
pub(crate) const MAX_ELEM_BYTES: usize = 64 * 1024;
/// A rule whose encoding could exceed this is refused rather than overrunning.
pub(crate) const MAX_RULE_BYTES: usize = 128 * 1024;

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// A batch ready to send: the bytes of one transaction and what each message was.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub(crate) buf: Vec<u8>,
    pub(crate) family: Family,
    pub(crate) table: String,
    /// Sequence number of BATCH_BEGIN; messages follow with consecutive numbers.
    pub(crate) begin_seq: u32,
    /// For each message after BATCH_BEGIN: index of the op it belongs to.
    pub(crate) msg_ops: Vec<usize>,
    /// Human description of each op ("add rule to chain X").
    pub(crate) op_desc: Vec<String>,
    /// Ops that change set headers, replayed into the connection's cache on commit.
    pub(crate) set_changes: Vec<SetChange>,
}

#[derive(Debug, Clone)]
pub(crate) enum SetChange {
    Add(Set),
    Delete(String),
    DeleteTable,
}

impl EncodedBatch {
    /// Bytes of the whole transaction.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Netlink messages between BATCH_BEGIN and BATCH_END.
    pub fn message_count(&self) -> usize {
        self.msg_ops.len()
    }

    /// The op index and description of the message with sequence number `seq`.
    pub(crate) fn op_of_seq(&self, seq: u32) -> Option<(usize, &str)> {
        let i = seq.checked_sub(self.begin_seq.wrapping_add(1))? as usize;
        let op = *self.msg_ops.get(i)?;
        Some((op, &self.op_desc[op]))
    }
}

pub(crate) fn family_code(f: Family) -> u8 {
    match f {
        Family::Inet => NFPROTO_INET,
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
    }
}

/// Set headers as each op sees them: those added earlier in the batch, else the
/// caller's knowledge of the kernel.
struct Shapes<'a> {
    batch: HashMap<String, Option<&'a Set>>,
    known: &'a dyn SetShapes,
}

impl SetShapes for Shapes<'_> {
    fn header(&self, name: &str) -> Option<&Set> {
        match self.batch.get(name) {
            Some(s) => *s,
            None => self.known.header(name),
        }
    }
}

pub(crate) fn describe(op: &Op) -> String {
    match op {
        Op::AddTable { .. } => "add table".into(),
        Op::DeleteTable => "delete table".into(),
        Op::AddSet(s) => format!("add set {}", s.name),
        Op::DeleteSet(s) => format!("delete set {s}"),
        Op::FlushSet(s) => format!("flush set {s}"),
        Op::AddElements { set, elements } => {
            format!("add {} element(s) to set {set}", elements.len())
        }
        Op::DeleteElements { set, keys } => {
            format!("delete {} element(s) from set {set}", keys.len())
        }
        Op::AddChain(c) => format!("add chain {}", c.name),
        Op::FlushChain(c) => format!("flush chain {c}"),
        Op::DeleteChain(c) => format!("delete chain {c}"),
        Op::AddRule { chain, rule } => match &rule.comment {
            Some(c) => format!("add rule to chain {chain} (comment {c:?})"),
            None => format!("add rule to chain {chain}"),
        },
    }
}

/// Encode `batch` as one transaction. `known` supplies headers of sets the batch
/// references but does not add (needed for their elements and NAT maps).
pub fn encode(batch: &Batch, known: &dyn SetShapes) -> Result<EncodedBatch, Error> {
    let fam = family_code(batch.family);
    let table = batch.table.as_str();
    let op_desc: Vec<String> = batch
        .ops
        .iter()
        .map(|op| format!("{} (table {} {})", describe(op), batch.family, table))
        .collect();
    let fail = |i: usize, msg: String| Error::Encode {
        op: i,
        what: op_desc[i].clone(),
        msg,
    };
    check_name(table).map_err(|m| Error::Encode {
        op: 0,
        what: format!("table {table:?}"),
        msg: m,
    })?;

    let n_msgs_hint = batch.message_count() + 2;
    let begin_seq = NEXT_SEQ.fetch_add(n_msgs_hint as u32 + 2, Ordering::Relaxed);
    let mut seq = begin_seq;
    let mut w = MsgWriter::new();
    push_batch_marker(&mut w.out, NFNL_MSG_BATCH_BEGIN, seq);
    let mut msg_ops = Vec::new();
    let mut shapes = Shapes {
        batch: HashMap::new(),
        known,
    };
    let mut set_changes = Vec::new();
    let mut next_set_id = begin_seq;

    for (i, op) in batch.ops.iter().enumerate() {
        let mut push = |w: &mut MsgWriter, ty: u16, flags: u16, p: Payload<'_>| {
            seq = seq.wrapping_add(1);
            w.push(ty, fam, flags | NLM_F_REQUEST | NLM_F_ACK, seq, p);
            msg_ops.push(i);
        };
        match op {
            Op::AddTable { comment } => {
                let mut t = NlTable::new();
                t.set_str(sys::NFTNL_TABLE_NAME, table);
                if let Some(c) = comment {
                    check_str(c, COMMENT_MAXLEN, "comment").map_err(|m| fail(i, m))?;
                }
                if let Some(u) = udata::comment(sys::NFTNL_UDATA_TABLE_COMMENT as u8, comment) {
                    t.set(sys::NFTNL_TABLE_USERDATA, &u);
                }
                push(&mut w, NFT_MSG_NEWTABLE, NLM_F_CREATE, Payload::Table(&t));
            }
            Op::DeleteTable => {
                let mut t = NlTable::new();
                t.set_str(sys::NFTNL_TABLE_NAME, table);
                push(&mut w, NFT_MSG_DELTABLE, 0, Payload::Table(&t));
                shapes.batch.clear();
                shapes.known = &NoSets;
                set_changes.push(SetChange::DeleteTable);
            }
            Op::AddSet(s) => {
                next_set_id = next_set_id.wrapping_add(1);
                let n = set_header(table, s, next_set_id).map_err(|m| fail(i, m))?;
                push(&mut w, NFT_MSG_NEWSET, NLM_F_CREATE, Payload::Set(&n));
                shapes.batch.insert(s.name.clone(), Some(s));
                let mut header = s.clone();
                header.elements.clear();
                set_changes.push(SetChange::Add(header));
            }
            Op::DeleteSet(name) | Op::FlushSet(name) => {
                check_name(name).map_err(|m| fail(i, m))?;
                let mut n = NlSet::new();
                n.set_str(sys::NFTNL_SET_TABLE, table);
                n.set_str(sys::NFTNL_SET_NAME, name);
                if let Op::DeleteSet(_) = op {
                    push(&mut w, NFT_MSG_DELSET, 0, Payload::Set(&n));
                    shapes.batch.insert(name.clone(), None);
                    set_changes.push(SetChange::Delete(name.clone()));
                } else {
                    // DELSETELEM without an element list flushes the set.
                    push(&mut w, NFT_MSG_DELSETELEM, 0, Payload::Elems(&n));
                }
            }
            Op::AddElements { set, elements } => {
                let header = shapes
                    .header(set)
                    .ok_or_else(|| fail(i, unknown_set(set)))?;
                let mut specs = Vec::new();
                for (k, v) in elements {
                    specs.extend(elem_specs(header, k, Some(v)).map_err(|m| fail(i, m))?);
                }
                for chunk in chunks(&specs) {
                    let n = elems_set(table, set, chunk);
                    push(&mut w, NFT_MSG_NEWSETELEM, NLM_F_CREATE, Payload::Elems(&n));
                }
            }
            Op::DeleteElements { set, keys } => {
                let header = shapes
                    .header(set)
                    .ok_or_else(|| fail(i, unknown_set(set)))?;
                let mut specs = Vec::new();
                for k in keys {
                    specs.extend(elem_specs(header, k, None).map_err(|m| fail(i, m))?);
                }
                for chunk in chunks(&specs) {
                    let n = elems_set(table, set, chunk);
                    push(&mut w, NFT_MSG_DELSETELEM, 0, Payload::Elems(&n));
                }
            }
            Op::AddChain(c) => {
                check_name(&c.name).map_err(|m| fail(i, m))?;
                if let Some(cm) = &c.comment {
                    check_str(cm, COMMENT_MAXLEN, "comment").map_err(|m| fail(i, m))?;
                }
                let mut n = NlChain::new();
                n.set_str(sys::NFTNL_CHAIN_TABLE, table);
                n.set_str(sys::NFTNL_CHAIN_NAME, &c.name);
                if let Some(b) = &c.base {
                    set_base(&mut n, b);
                }
                if let Some(u) = udata::comment(sys::NFTNL_UDATA_CHAIN_COMMENT as u8, &c.comment) {
                    n.set(sys::NFTNL_CHAIN_USERDATA, &u);
                }
                push(&mut w, NFT_MSG_NEWCHAIN, NLM_F_CREATE, Payload::Chain(&n));
            }
            Op::FlushChain(name) | Op::DeleteChain(name) => {
                check_name(name).map_err(|m| fail(i, m))?;
                if let Op::FlushChain(_) = op {
                    // DELRULE naming only the chain removes all its rules.
                    let mut r = NlRule::new();
                    r.set_str(sys::NFTNL_RULE_TABLE, table);
                    r.set_str(sys::NFTNL_RULE_CHAIN, name);
                    push(&mut w, NFT_MSG_DELRULE, 0, Payload::Rule(&r));
                } else {
                    let mut n = NlChain::new();
                    n.set_str(sys::NFTNL_CHAIN_TABLE, table);
                    n.set_str(sys::NFTNL_CHAIN_NAME, name);
                    push(&mut w, NFT_MSG_DELCHAIN, 0, Payload::Chain(&n));
                }
            }
            Op::AddRule { chain, rule } => {
                check_name(chain).map_err(|m| fail(i, m))?;
                if let Some(cm) = &rule.comment {
                    check_str(cm, COMMENT_MAXLEN, "comment").map_err(|m| fail(i, m))?;
                }
                let vms = encode_rule(batch.family, &shapes, rule).map_err(|m| fail(i, m))?;
                let size: usize = vms.iter().map(vm_size_hint).sum::<usize>() + 1024;
                if size > MAX_RULE_BYTES {
                    return Err(fail(i, format!("rule too large ({size} bytes)")));
                }
                let mut r = NlRule::new();
                r.set_str(sys::NFTNL_RULE_TABLE, table);
                r.set_str(sys::NFTNL_RULE_CHAIN, chain);
                for vm in &vms {
                    r.add_expr(expr_of(vm));
                }
                if let Some(u) = udata::comment(sys::NFTNL_UDATA_RULE_COMMENT as u8, &rule.comment)
                {
                    r.set(sys::NFTNL_RULE_USERDATA, &u);
                }
                push(
                    &mut w,
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND,
                    Payload::Rule(&r),
                );
            }
        }
    }
    seq = seq.wrapping_add(1);
    push_batch_marker(&mut w.out, NFNL_MSG_BATCH_END, seq);
    Ok(EncodedBatch {
        buf: w.out,
        family: batch.family,
        table: batch.table.clone(),
        begin_seq,
        msg_ops,
        op_desc,
        set_changes,
    })
}

struct NoSets;
impl SetShapes for NoSets {
    fn header(&self, _: &str) -> Option<&Set> {
        None
    }
}

fn chunks(specs: &[ElemSpec]) -> Vec<&[ElemSpec]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, s) in specs.iter().enumerate() {
        let sz = s.size_hint();
        if bytes + sz > MAX_ELEM_BYTES && i > start {
            out.push(&specs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += sz;
    }
    if start < specs.len() {
        out.push(&specs[start..]);
    }
    out
}

fn elems_set(table: &str, set: &str, specs: &[ElemSpec]) -> NlSet {
    let mut n = NlSet::new();
    n.set_str(sys::NFTNL_SET_TABLE, table);
    n.set_str(sys::NFTNL_SET_NAME, set);
    for s in specs {
        n.add_elem(s.to_nl());
    }
    n
}

fn vm_size_hint(vm: &super::vm::Vm) -> usize {
    use super::vm::{Imm, Vm};
    64 + match vm {
        Vm::Cmp { data, .. } => data.len(),
        Vm::Range { from, to, .. } => from.len() + to.len(),
        Vm::Bitwise { mask, xor, .. } => mask.len() + xor.len(),
        Vm::Lookup { set, .. } | Vm::Dynset { set, .. } => set.len(),
        Vm::Immediate {
            data: Imm::Data(d), ..
        } => d.len(),
        Vm::Immediate {
            data: Imm::Verdict(_, c),
            ..
        } => c.as_ref().map_or(0, String::len),
        Vm::Log { prefix, .. } => prefix.as_ref().map_or(0, String::len),
        _ => 0,
    }
}

pub(crate) fn hook_num(h: Hook) -> u32 {
    match h {
        Hook::Prerouting => NF_INET_PRE_ROUTING,
        Hook::Input => NF_INET_LOCAL_IN,
        Hook::Forward => NF_INET_FORWARD,
        Hook::Output => NF_INET_LOCAL_OUT,
        Hook::Postrouting => NF_INET_POST_ROUTING,
    }
}

pub(crate) fn chain_type_name(t: ChainType) -> &'static str {
    match t {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
        ChainType::Route => "route",
    }
}

fn set_base(n: &mut NlChain, b: &BaseChain) {
    n.set_u32(sys::NFTNL_CHAIN_HOOKNUM, hook_num(b.hook));
    n.set_u32(sys::NFTNL_CHAIN_PRIO, b.priority as u32);
    n.set_str(sys::NFTNL_CHAIN_TYPE, chain_type_name(b.kind));
    n.set_u32(
        sys::NFTNL_CHAIN_POLICY,
        match b.policy {
            ChainPolicy::Accept => NF_ACCEPT as u32,
            ChainPolicy::Drop => NF_DROP as u32,
        },
    );
}

/// BATCH_BEGIN / BATCH_END: an nfgenmsg addressed to the nf_tables subsystem.
fn push_batch_marker(out: &mut Vec<u8>, ty: u16, seq: u32) {
    let len: u32 = 16 + 4;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version 0, res_id (big endian) = subsystem.
    out.push(0);
    out.push(0);
    out.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
}
