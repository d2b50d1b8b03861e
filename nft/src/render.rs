//! Rendering the model as `nft -f` text: for humans (`--dry-run`, `explain`), for
//! golden tests, and to load the same content through the `nft` CLI in benchmarks.
//!
//! The text is what nftables 1.0.6 accepts; every construct here was checked with
//! `nft -c -f`. Facts about that syntax which shape this module:
//!
//! - Names (tables, chains, sets) cannot be quoted and cannot be keywords
//!   (`chain ip`, `set counter` are syntax errors). [`is_valid_name`] checks the
//!   shape; [`validate`] reports names that will not parse.
//! - Quoted strings have no escapes: a `"` cannot appear inside one. Comments,
//!   log prefixes and interface names pass through [`sanitize_text`], which replaces
//!   `"` with `'`, control characters with spaces and truncates to the `nft` limit
//!   (comments: 128 bytes). Producers should build model strings with
//!   [`sanitize_comment`] so that netlink and text carry the same bytes.
//! - A concatenated literal cannot be compared directly ("use concatenations with
//!   sets and maps"), so `ip saddr . th dport == 10.0.0.1 . 80` renders as a lookup
//!   in an anonymous set `ip saddr . th dport { 10.0.0.1 . 80 }` (same verdict).
//! - `numgen` produces a plain integer, which `nft` refuses to look up in a
//!   `type mark` map. A `mark`-keyed map that some rule indexes with `numgen` is
//!   therefore declared `typeof numgen random mod N : …` (same 32-bit kernel key).
//!   A concatenation ending in numgen ([`MapKey::FieldsAndNumgen`]) is declared
//!   `typeof ip daddr . meta l4proto . th dport . numgen random mod N : ip daddr .
//!   th dport` (nft 1.0.6 accepts and lists it).
//! - `ct state != established,related` is an exact inequality in `nft`, not a bit
//!   test, so negated bit tests render as `ct state & (established|related) == 0`.
//! - Interval sets are rendered without `auto-merge`: elements map one to one onto
//!   kernel elements, which keeps diffs exact. The model must therefore not hold
//!   overlapping intervals (nft rejects them); adjacent ones stay separate.
//! - `reject with icmpx …` only exists in `inet` tables; `ip`/`ip6` tables get the
//!   family's own `icmp`/`icmpv6` code.
//! - `dnat … to addr:port` and maps to `addr . port` need a transport protocol
//!   match earlier in the rule (`meta l4proto tcp`), which [`validate`] checks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::batch::{Batch, Op};
use crate::model::*;

/// Longest comment `nft` accepts, in bytes.
pub const MAX_COMMENT_LEN: usize = 128;
/// Longest log prefix the kernel keeps (`NF_LOG_PREFIXLEN` minus the NUL), in bytes.
pub const MAX_LOG_PREFIX_LEN: usize = 127;
/// Longest interface name (`IFNAMSIZ` minus the NUL), in bytes.
pub const MAX_IFNAME_LEN: usize = 15;

/// The whole table as one `nft -f` script (`table inet x { … }`).
pub fn render_text(table: &Table) -> String {
    let mut out = String::with_capacity(estimate(table));
    write_table(&mut out, table).expect("writing to a String cannot fail");
    out
}

/// Write the table into any `fmt::Write` (a `String`, a `Formatter`).
pub fn write_table<W: Write>(w: &mut W, table: &Table) -> fmt::Result {
    let hints = Hints::from_rules(table.chains.values().flat_map(|c| c.rules.iter()));
    let r = Renderer {
        family: table.family,
        hints: &hints,
    };
    r.table(w, table)
}

/// One rule's statements and comment, as they appear after `add rule … chain`.
/// `family` decides the `reject` syntax.
pub fn render_rule(family: Family, rule: &Rule) -> String {
    let hints = Hints::default();
    let r = Renderer {
        family,
        hints: &hints,
    };
    let mut out = String::new();
    r.rule(&mut out, rule)
        .expect("writing to a String cannot fail");
    out
}

/// The `nft -f` script equivalent to a transaction: `add table`, `add set`,
/// `add element`, `add rule` … one command per operation, in batch order.
/// `nft -f` applies a script atomically, like the netlink batch.
pub fn render_batch(batch: &Batch) -> String {
    render_batch_with(batch, None)
}

/// Like [`render_batch`], with the table the batch applies to (the committed or
/// desired state) as context. The text needs two facts a batch may not carry:
/// whether a set being flushed is a map (`flush map`), and whether a `mark` map
/// is indexed by `numgen` (see the module doc). Without context both are taken
/// from the batch's own `AddSet`/`AddRule` operations.
pub fn render_batch_with(batch: &Batch, context: Option<&Table>) -> String {
    let batch_rules = batch.ops.iter().filter_map(|op| match op {
        Op::AddRule { rule, .. } => Some(rule),
        _ => None,
    });
    let ctx_rules = context
        .into_iter()
        .flat_map(|t| t.chains.values().flat_map(|c| c.rules.iter()));
    let hints = Hints::from_rules(batch_rules.chain(ctx_rules));
    let mut maps: HashMap<&str, bool> = HashMap::new();
    if let Some(t) = context {
        for s in t.sets.values() {
            maps.insert(&s.name, s.data.is_some());
        }
    }
    for op in &batch.ops {
        if let Op::AddSet(s) = op {
            maps.insert(&s.name, s.data.is_some());
        }
    }
    let r = Renderer {
        family: batch.family,
        hints: &hints,
    };
    let mut out = String::with_capacity(64 * batch.message_count() + 64);
    r.batch(&mut out, batch, &maps)
        .expect("writing to a String cannot fail");
    out
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_table(f, self)
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_batch(self))
    }
}

// ---------------------------------------------------------------------------
// Strings and names
// ---------------------------------------------------------------------------

/// Make `s` safe inside an `nft` quoted string of at most `max` bytes: `"` becomes
/// `'`, `$` (variable expansion in some strings) becomes `S`, control characters
/// become spaces, and the result is cut at a character boundary.
pub fn sanitize_text(s: &str, max: usize) -> Cow<'_, str> {
    let clean = s.len() <= max && !s.chars().any(|c| c == '"' || c == '$' || c.is_control());
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = match c {
            '"' => '\'',
            '$' => 'S',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A comment as the model should store it: sanitised and at most
/// [`MAX_COMMENT_LEN`] bytes, so netlink and text carry identical bytes.
pub fn sanitize_comment(s: &str) -> String {
    sanitize_text(s, MAX_COMMENT_LEN).into_owned()
}

/// Whether `name` has the shape of an `nft` identifier: a letter or `_`, then
/// letters, digits, `_`, `-`, `.`, `/`. (It must also not be a keyword such as
/// `ip` or `counter`; [`validate`] checks the common ones.)
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && name.len() < 256
}

/// Keywords that cannot be used as bare names. Not the whole grammar: the ones a
/// generated name could plausibly collide with.
const KEYWORDS: &[&str] = &[
    "accept",
    "add",
    "chain",
    "comment",
    "continue",
    "counter",
    "ct",
    "drop",
    "flags",
    "goto",
    "hook",
    "icmp",
    "icmpv6",
    "icmpx",
    "inet",
    "ip",
    "ip6",
    "jump",
    "limit",
    "log",
    "map",
    "mark",
    "masquerade",
    "meta",
    "policy",
    "priority",
    "reject",
    "return",
    "rule",
    "set",
    "snat",
    "dnat",
    "table",
    "tcp",
    "th",
    "timeout",
    "type",
    "udp",
    "sctp",
    "vmap",
    "elements",
    "numgen",
    "fib",
    "update",
    "redirect",
    "queue",
    "delete",
    "flush",
    "state",
];

/// A problem that keeps a table from rendering to text `nft` accepts, or from
/// meaning the same in text as in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `chain forward`, `set peers`, `chain forward rule 3` …
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Everything in `table` that `nft -f` would reject or that rendering would alter.
/// Empty means the rendered text loads and means what the model says.
pub fn validate(table: &Table) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |object: String, message: String| out.push(Problem { object, message });
    let check_name = |name: &str| -> Option<String> {
        if !is_valid_name(name) {
            Some(format!("name {name:?} is not an nft identifier"))
        } else if KEYWORDS.contains(&name) {
            Some(format!("name {name:?} is an nft keyword"))
        } else {
            None
        }
    };
    let check_comment = |c: &Option<String>| -> Option<String> {
        let c = c.as_deref()?;
        match sanitize_text(c, MAX_COMMENT_LEN) {
            Cow::Borrowed(_) => None,
            Cow::Owned(_) => Some(format!(
                "comment {c:?} is longer than {MAX_COMMENT_LEN} bytes or holds '\"', '$' or control characters"
            )),
        }
    };
    if let Some(m) = check_name(&table.name) {
        push(format!("table {}", table.name), m);
    }
    if let Some(m) = check_comment(&table.comment) {
        push(format!("table {}", table.name), m);
    }
    for set in table.sets.values() {
        let obj = || format!("set {}", set.name);
        if let Some(m) = check_name(&set.name) {
            push(obj(), m);
        }
        if let Some(m) = check_comment(&set.comment) {
            push(obj(), m);
        }
        if set.key.is_empty() {
            push(obj(), "empty key type".into());
        }
        for (key, value) in &set.elements {
            if key.len() != set.key.len() {
                push(
                    obj(),
                    format!("element {key:?} does not match the key type"),
                );
            }
            if key.iter().any(|k| matches!(k, KeyPart::Range(..))) && !set.flags.interval {
                push(
                    obj(),
                    format!("element {key:?} is a range in a set without interval"),
                );
            }
            if let Some(m) = check_comment(&value.comment) {
                push(obj(), m);
            }
        }
    }
    for chain in table.chains.values() {
        let obj = || format!("chain {}", chain.name);
        if let Some(m) = check_name(&chain.name) {
            push(obj(), m);
        }
        if let Some(m) = check_comment(&chain.comment) {
            push(obj(), m);
        }
        for (i, rule) in chain.rules.iter().enumerate() {
            let obj = || format!("chain {} rule {}", chain.name, i + 1);
            if rule.exprs.is_empty() {
                push(obj(), "a rule needs at least one statement".into());
            }
            if let Some(m) = check_comment(&rule.comment) {
                push(obj(), m);
            }
            // `meta l4proto tcp` names one protocol; `meta l4proto @protos` is
            // enough for nft to accept a NAT port (checked with nft 1.0.6) but
            // gives `ct original proto-dst` no type.
            let mut l4_known = false;
            let mut l4_single = false;
            if let Some(i) = rule
                .exprs
                .iter()
                .position(|e| matches!(e, Expr::Verdict(_) | Expr::Vmap { .. }))
            {
                if i + 1 < rule.exprs.len() {
                    push(
                        obj(),
                        "statements after a verdict never run (nft refuses them)".into(),
                    );
                }
            }
            for e in &rule.exprs {
                match e {
                    Expr::Match {
                        left,
                        op: MatchOp::Eq,
                        right: Rhs::Value(_),
                    } if left == &[Field::L4Proto] => {
                        l4_known = true;
                        l4_single = true;
                    }
                    Expr::Match {
                        left,
                        op: MatchOp::Eq,
                        right: Rhs::Set(_),
                    } if left == &[Field::L4Proto] => l4_known = true,
                    Expr::Match {
                        left,
                        right: Rhs::Bits(_),
                        ..
                    } if left.len() != 1 => {
                        push(obj(), "a bit test needs exactly one field".into());
                    }
                    Expr::Dnat { to, .. } | Expr::Snat { to, .. } => {
                        let needs_l4 = match to {
                            NatTarget::Addr { port, .. } => port.is_some(),
                            NatTarget::Map { map, .. } => table.sets.get(map).is_some_and(|s| {
                                matches!(&s.data, Some(SetData::Values(v)) if v.contains(&DataType::InetService))
                            }),
                        };
                        if needs_l4 && !l4_known {
                            push(
                                obj(),
                                "NAT to a port needs a `meta l4proto` match earlier in the rule"
                                    .into(),
                            );
                        }
                    }
                    Expr::Match { left, .. }
                    | Expr::SetUpdate { key: left, .. }
                    | Expr::MapUpdate { key: left, .. }
                        if !l4_single
                            && left.len() > 1
                            && left.contains(&Field::CtOriginalProtoDst) =>
                    {
                        push(
                            obj(),
                            "ct original proto-dst in a concatenation needs `meta l4proto tcp|udp|sctp` first"
                                .into(),
                        );
                    }
                    Expr::Reject(RejectKind::TcpReset) if !l4_single => {
                        push(
                            obj(),
                            "reject with tcp reset needs `meta l4proto tcp` first".into(),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The renderer
// ---------------------------------------------------------------------------

/// Facts about rules that change how a set header must be written.
#[derive(Default)]
struct Hints<'a> {
    /// Maps indexed by `numgen random mod N` (possibly after packet fields), with
    /// the fields and an `N` seen.
    numgen_maps: HashMap<&'a str, (&'a [Field], u32)>,
}

impl<'a> Hints<'a> {
    fn from_rules(rules: impl Iterator<Item = &'a Rule>) -> Self {
        let mut numgen_maps = HashMap::new();
        for rule in rules {
            for e in &rule.exprs {
                let (key, map) = match e {
                    Expr::Vmap { key, map } | Expr::SetFromMap { key, map, .. } => (key, map),
                    Expr::Dnat {
                        to: NatTarget::Map { key, map },
                        ..
                    }
                    | Expr::Snat {
                        to: NatTarget::Map { key, map },
                        ..
                    } => (key, map),
                    _ => continue,
                };
                match key {
                    MapKey::NumgenRandom { modulus } => {
                        numgen_maps.insert(map.as_str(), (&[][..], *modulus));
                    }
                    MapKey::FieldsAndNumgen { fields, modulus } => {
                        numgen_maps.insert(map.as_str(), (fields.as_slice(), *modulus));
                    }
                    MapKey::Fields(_) => {}
                }
            }
        }
        Hints { numgen_maps }
    }
}

struct Renderer<'h> {
    family: Family,
    hints: &'h Hints<'h>,
}

/// Rough output size, so a 250k-element table renders without reallocating much.
fn estimate(table: &Table) -> usize {
    let elements: usize = table.sets.values().map(|s| s.elements.len()).sum();
    let rules: usize = table.chains.values().map(|c| c.rules.len()).sum();
    256 + 32 * elements + 96 * rules
}

type HeaderLine<'h> = fn(&Renderer<'h>, &mut String, &Set) -> fmt::Result;

impl<'h> Renderer<'h> {
    /// The parts of a set header, each written to a scratch buffer so that empty
    /// ones are skipped; shared by the table block and `add set`.
    const SET_HEADER_LINES: [HeaderLine<'h>; 4] = [
        Self::set_type::<String>,
        Self::set_flags::<String>,
        Self::set_timeout::<String>,
        Self::set_comment::<String>,
    ];

    fn table<W: Write>(&self, w: &mut W, t: &Table) -> fmt::Result {
        writeln!(w, "table {} {} {{", t.family, t.name)?;
        if let Some(c) = &t.comment {
            w.write_str("\tcomment ")?;
            quoted(w, c, MAX_COMMENT_LEN)?;
            w.write_char('\n')?;
        }
        for set in t.sets.values() {
            self.set_block(w, set)?;
        }
        for chain in t.chains.values() {
            self.chain_block(w, chain)?;
        }
        w.write_str("}\n")
    }

    fn set_block<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        writeln!(w, "\t{} {} {{", set_keyword(s), s.name)?;
        let mut buf = String::new();
        for line in Self::SET_HEADER_LINES {
            buf.clear();
            line(self, &mut buf, s)?;
            if !buf.is_empty() {
                writeln!(w, "\t\t{buf}")?;
            }
        }
        if !s.elements.is_empty() {
            w.write_str("\t\telements = {")?;
            let one_line = s.elements.len() <= 4;
            for (i, (k, v)) in s.elements.iter().enumerate() {
                if i > 0 {
                    w.write_char(',')?;
                }
                w.write_str(if one_line { " " } else { "\n\t\t\t" })?;
                self.element(w, k, v)?;
            }
            w.write_str(if one_line { " }\n" } else { "\n\t\t}\n" })?;
        }
        w.write_str("\t}\n")
    }

    /// `type ipv4_addr . inet_service : verdict`, or `typeof [fields .] numgen … : …`.
    fn set_type<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        let numgen = self
            .hints
            .numgen_maps
            .get(s.name.as_str())
            .filter(|(fields, _)| {
                // The key must be the fields' types followed by the numgen mark.
                s.key.len() == fields.len() + 1
                    && s.key.last() == Some(&DataType::Mark)
                    && fields
                        .iter()
                        .zip(&s.key)
                        .all(|(f, t)| field_type(*f) == Some(*t))
            });
        if let Some((fields, modulus)) = numgen {
            w.write_str("typeof ")?;
            for f in fields.iter() {
                write!(w, "{} . ", field_name(*f))?;
            }
            write!(w, "numgen random mod {modulus}")?;
            return match &s.data {
                None => Ok(()),
                Some(SetData::Verdict) => w.write_str(" : verdict"),
                Some(SetData::Values(v)) => {
                    w.write_str(" : ")?;
                    join(w, v, " . ", |w, t| w.write_str(typeof_expr(*t)))
                }
            };
        }
        w.write_str("type ")?;
        join(w, &s.key, " . ", |w, t| w.write_str(type_name(*t)))?;
        match &s.data {
            None => Ok(()),
            Some(SetData::Verdict) => w.write_str(" : verdict"),
            Some(SetData::Values(v)) => {
                w.write_str(" : ")?;
                join(w, v, " . ", |w, t| w.write_str(type_name(*t)))
            }
        }
    }

    fn set_flags<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        let f = s.flags;
        let names: Vec<&str> = [
            (f.interval, "interval"),
            (f.timeout, "timeout"),
            (f.dynamic, "dynamic"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        if names.is_empty() {
            return Ok(());
        }
        write!(w, "flags {}", names.join(","))
    }

    fn set_timeout<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        match s.timeout {
            Some(t) => {
                w.write_str("timeout ")?;
                duration(w, t)
            }
            None => Ok(()),
        }
    }

    fn set_comment<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        match &s.comment {
            Some(c) => {
                w.write_str("comment ")?;
                quoted(w, c, MAX_COMMENT_LEN)
            }
            None => Ok(()),
        }
    }

    /// The header of `add set … { … }` on one line, `;`-separated.
    fn set_header_inline<W: Write>(&self, w: &mut W, s: &Set) -> fmt::Result {
        w.write_str("{ ")?;
        let mut buf = String::new();
        for line in Self::SET_HEADER_LINES {
            buf.clear();
            line(self, &mut buf, s)?;
            if !buf.is_empty() {
                w.write_str(&buf)?;
                w.write_str("; ")?;
            }
        }
        w.write_char('}')
    }

    /// `key [timeout T] [comment "c"] [: data]`.
    fn element<W: Write>(&self, w: &mut W, key: &ElemKey, v: &ElemValue) -> fmt::Result {
        join(w, key, " . ", key_part)?;
        if let Some(t) = v.timeout {
            w.write_str(" timeout ")?;
            duration(w, t)?;
        }
        if let Some(c) = &v.comment {
            w.write_str(" comment ")?;
            quoted(w, c, MAX_COMMENT_LEN)?;
        }
        match &v.data {
            None => Ok(()),
            Some(ElemData::Verdict(vd)) => {
                w.write_str(" : ")?;
                verdict(w, vd)
            }
            Some(ElemData::Values(vals)) => {
                w.write_str(" : ")?;
                join(w, vals, " . ", value)
            }
        }
    }

    fn elements<W: Write>(&self, w: &mut W, elems: &[(ElemKey, ElemValue)]) -> fmt::Result {
        w.write_str("{ ")?;
        for (i, (k, v)) in elems.iter().enumerate() {
            if i > 0 {
                w.write_str(", ")?;
            }
            self.element(w, k, v)?;
        }
        w.write_str(" }")
    }

    fn chain_block<W: Write>(&self, w: &mut W, c: &Chain) -> fmt::Result {
        writeln!(w, "\tchain {} {{", c.name)?;
        if let Some(b) = &c.base {
            w.write_str("\t\t")?;
            base_chain(w, b)?;
            w.write_char('\n')?;
        }
        if let Some(cm) = &c.comment {
            w.write_str("\t\tcomment ")?;
            quoted(w, cm, MAX_COMMENT_LEN)?;
            w.write_char('\n')?;
        }
        for rule in &c.rules {
            w.write_str("\t\t")?;
            self.rule(w, rule)?;
            w.write_char('\n')?;
        }
        w.write_str("\t}\n")
    }

    fn rule<W: Write>(&self, w: &mut W, rule: &Rule) -> fmt::Result {
        for (i, e) in rule.exprs.iter().enumerate() {
            if i > 0 {
                w.write_char(' ')?;
            }
            self.expr(w, e)?;
        }
        if let Some(c) = &rule.comment {
            w.write_str(" comment ")?;
            quoted(w, c, MAX_COMMENT_LEN)?;
        }
        Ok(())
    }

    fn expr<W: Write>(&self, w: &mut W, e: &Expr) -> fmt::Result {
        match e {
            Expr::Match { left, op, right } => match_expr(w, left, *op, right),
            Expr::Vmap { key, map } => {
                map_key(w, key)?;
                write!(w, " vmap @{map}")
            }
            Expr::Counter => w.write_str("counter"),
            Expr::Log { prefix, group } => {
                w.write_str("log")?;
                if let Some(p) = prefix {
                    w.write_str(" prefix ")?;
                    quoted(w, p, MAX_LOG_PREFIX_LEN)?;
                }
                if let Some(g) = group {
                    write!(w, " group {g}")?;
                }
                Ok(())
            }
            Expr::SetMarkBits(bits) => write!(w, "meta mark set meta mark | {bits:#010x}"),
            Expr::SetFromMap { target, key, map } => {
                write!(w, "{} set ", field_name(*target))?;
                map_key(w, key)?;
                write!(w, " map @{map}")
            }
            Expr::Dnat { family, to } => nat(w, "dnat", *family, to),
            Expr::Snat { family, to } => nat(w, "snat", *family, to),
            Expr::Masquerade { fully_random } => {
                w.write_str("masquerade")?;
                if *fully_random {
                    w.write_str(" fully-random")?;
                }
                Ok(())
            }
            Expr::Reject(kind) => {
                let icmp = match self.family {
                    Family::Inet => "icmpx",
                    Family::Ip => "icmp",
                    Family::Ip6 => "icmpv6",
                };
                match kind {
                    RejectKind::TcpReset => w.write_str("reject with tcp reset"),
                    RejectKind::IcmpxPortUnreachable => {
                        write!(w, "reject with {icmp} port-unreachable")
                    }
                    RejectKind::IcmpxAdminProhibited => {
                        write!(w, "reject with {icmp} admin-prohibited")
                    }
                }
            }
            Expr::SetUpdate {
                op,
                set,
                key,
                timeout,
            } => {
                let op = match op {
                    SetUpdateOp::Add => "add",
                    SetUpdateOp::Update => "update",
                };
                write!(w, "{op} @{set} {{ ")?;
                fields(w, key)?;
                if let Some(t) = timeout {
                    w.write_str(" timeout ")?;
                    duration(w, *t)?;
                }
                w.write_str(" }")
            }
            Expr::MapUpdate {
                op,
                map,
                key,
                data,
                timeout,
            } => {
                let op = match op {
                    SetUpdateOp::Add => "add",
                    SetUpdateOp::Update => "update",
                };
                write!(w, "{op} @{map} {{ ")?;
                fields(w, key)?;
                if let Some(t) = timeout {
                    w.write_str(" timeout ")?;
                    duration(w, *t)?;
                }
                w.write_str(" : ")?;
                fields(w, data)?;
                w.write_str(" }")
            }
            Expr::Verdict(v) => verdict(w, v),
        }
    }

    fn batch<W: Write>(&self, w: &mut W, b: &Batch, maps: &HashMap<&str, bool>) -> fmt::Result {
        let fam = b.family;
        let t = &b.table;
        for op in &b.ops {
            match op {
                Op::AddTable { comment } => {
                    write!(w, "add table {fam} {t}")?;
                    if let Some(c) = comment {
                        w.write_str(" { comment ")?;
                        quoted(w, c, MAX_COMMENT_LEN)?;
                        w.write_str("; }")?;
                    }
                }
                Op::DeleteTable => write!(w, "delete table {fam} {t}")?,
                Op::AddSet(s) => {
                    write!(w, "add {} {fam} {t} {} ", set_keyword(s), s.name)?;
                    self.set_header_inline(w, s)?;
                }
                Op::DeleteSet(name) => {
                    let kw = if maps.get(name.as_str()) == Some(&true) {
                        "map"
                    } else {
                        "set"
                    };
                    write!(w, "delete {kw} {fam} {t} {name}")?;
                }
                Op::FlushSet(name) => {
                    // `flush set` fails on a map: nft looks the name up by kind.
                    let kw = if maps.get(name.as_str()) == Some(&true) {
                        "map"
                    } else {
                        "set"
                    };
                    write!(w, "flush {kw} {fam} {t} {name}")?;
                }
                Op::AddElements { set, elements } => {
                    if elements.is_empty() {
                        continue;
                    }
                    write!(w, "add element {fam} {t} {set} ")?;
                    self.elements(w, elements)?;
                }
                Op::DeleteElements { set, keys } => {
                    if keys.is_empty() {
                        continue;
                    }
                    write!(w, "delete element {fam} {t} {set} {{ ")?;
                    for (i, k) in keys.iter().enumerate() {
                        if i > 0 {
                            w.write_str(", ")?;
                        }
                        join(w, k, " . ", key_part)?;
                    }
                    w.write_str(" }")?;
                }
                Op::AddChain(c) => {
                    write!(w, "add chain {fam} {t} {}", c.name)?;
                    if c.base.is_some() || c.comment.is_some() {
                        w.write_str(" { ")?;
                        if let Some(b) = &c.base {
                            base_chain(w, b)?;
                            w.write_char(' ')?;
                        }
                        if let Some(cm) = &c.comment {
                            w.write_str("comment ")?;
                            quoted(w, cm, MAX_COMMENT_LEN)?;
                            w.write_str("; ")?;
                        }
                        w.write_char('}')?;
                    }
                }
                Op::FlushChain(name) => write!(w, "flush chain {fam} {t} {name}")?,
                Op::DeleteChain(name) => write!(w, "delete chain {fam} {t} {name}")?,
                Op::AddRule { chain, rule } => {
                    write!(w, "add rule {fam} {t} {chain} ")?;
                    self.rule(w, rule)?;
                }
            }
            w.write_char('\n')?;
        }
        Ok(())
    }
}

fn set_keyword(s: &Set) -> &'static str {
    if s.data.is_some() {
        "map"
    } else {
        "set"
    }
}

fn base_chain<W: Write>(w: &mut W, b: &BaseChain) -> fmt::Result {
    let kind = match b.kind {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
        ChainType::Route => "route",
    };
    let hook = match b.hook {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    };
    let policy = match b.policy {
        ChainPolicy::Accept => "accept",
        ChainPolicy::Drop => "drop",
    };
    write!(
        w,
        "type {kind} hook {hook} priority {}; policy {policy};",
        b.priority
    )
}

fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "ipv4_addr",
        DataType::Ipv6Addr => "ipv6_addr",
        DataType::InetProto => "inet_proto",
        DataType::InetService => "inet_service",
        DataType::Mark => "mark",
        DataType::IfName => "ifname",
    }
}

/// An expression of each type, for `typeof` declarations.
fn typeof_expr(t: DataType) -> &'static str {
    match t {
        DataType::Ipv4Addr => "ip daddr",
        DataType::Ipv6Addr => "ip6 daddr",
        DataType::InetProto => "meta l4proto",
        DataType::InetService => "th dport",
        DataType::Mark => "meta mark",
        DataType::IfName => "meta iifname",
    }
}

fn field_name(f: Field) -> &'static str {
    match f {
        Field::IpSaddr => "ip saddr",
        Field::IpDaddr => "ip daddr",
        Field::Ip6Saddr => "ip6 saddr",
        Field::Ip6Daddr => "ip6 daddr",
        Field::L4Proto => "meta l4proto",
        Field::ThSport => "th sport",
        Field::ThDport => "th dport",
        Field::NfProto => "meta nfproto",
        Field::IifName => "iifname",
        Field::OifName => "oifname",
        Field::Mark => "meta mark",
        Field::CtState => "ct state",
        Field::CtStatus => "ct status",
        Field::CtMark => "ct mark",
        Field::FibDaddrType => "fib daddr type",
        Field::CtOriginalIpDaddr => "ct original ip daddr",
        Field::CtOriginalIp6Daddr => "ct original ip6 daddr",
        Field::CtOriginalProtoDst => "ct original proto-dst",
    }
}

fn fields<W: Write>(w: &mut W, fs: &[Field]) -> fmt::Result {
    join(w, fs, " . ", |w, f| w.write_str(field_name(*f)))
}

fn map_key<W: Write>(w: &mut W, k: &MapKey) -> fmt::Result {
    match k {
        MapKey::Fields(fs) => fields(w, fs),
        MapKey::NumgenRandom { modulus } => write!(w, "numgen random mod {modulus}"),
        MapKey::FieldsAndNumgen {
            fields: fs,
            modulus,
        } => {
            fields(w, fs)?;
            write!(w, " . numgen random mod {modulus}")
        }
    }
}

/// The data type a field's value has in a set key (for `typeof` declarations).
fn field_type(f: Field) -> Option<DataType> {
    Some(match f {
        Field::IpSaddr | Field::IpDaddr | Field::CtOriginalIpDaddr => DataType::Ipv4Addr,
        Field::Ip6Saddr | Field::Ip6Daddr | Field::CtOriginalIp6Daddr => DataType::Ipv6Addr,
        Field::L4Proto => DataType::InetProto,
        Field::ThSport | Field::ThDport | Field::CtOriginalProtoDst => DataType::InetService,
        Field::IifName | Field::OifName => DataType::IfName,
        Field::Mark | Field::CtMark => DataType::Mark,
        _ => return None,
    })
}

fn match_expr<W: Write>(w: &mut W, left: &[Field], op: MatchOp, right: &Rhs) -> fmt::Result {
    fields(w, left)?;
    let neg = op == MatchOp::Neq;
    match right {
        Rhs::Value(vals) if left.len() > 1 || vals.len() > 1 => {
            // A concatenated literal only parses as an (anonymous) set lookup.
            w.write_str(if neg { " != { " } else { " { " })?;
            join(w, vals, " . ", value)?;
            w.write_str(" }")
        }
        Rhs::Value(vals) => {
            // On bitmask types (`ct state`) the implicit operator is a bit test;
            // an exact comparison needs an explicit `==`.
            let bitmask = matches!(left, [Field::CtState | Field::CtStatus]);
            w.write_str(match (neg, bitmask) {
                (true, _) => " != ",
                (false, true) => " == ",
                (false, false) => " ",
            })?;
            join(w, vals, " . ", value)
        }
        Rhs::Range(lo, hi) => {
            w.write_str(if neg { " != " } else { " " })?;
            key_part(w, &KeyPart::range(lo.clone(), hi.clone()))
        }
        Rhs::Set(name) => write!(w, "{}@{name}", if neg { " != " } else { " " }),
        Rhs::Bits(mask) => {
            let names = match left {
                [Field::CtState] => bit_names(*mask, CT_STATE_NAMES),
                [Field::CtStatus] => bit_names(*mask, CT_STATUS_NAMES),
                _ => None,
            };
            match (neg, names) {
                // `ct state established,related` is nft's own bit test idiom.
                (false, Some(n)) => write!(w, " {}", n.join(",")),
                (true, Some(n)) => write!(w, " & ({}) == 0", n.join("|")),
                (false, None) => write!(w, " & {mask:#010x} != 0"),
                (true, None) => write!(w, " & {mask:#010x} == 0"),
            }
        }
    }
}

fn nat<W: Write>(w: &mut W, kw: &str, family: NatFamily, to: &NatTarget) -> fmt::Result {
    let fam = match family {
        NatFamily::Ip => "ip",
        NatFamily::Ip6 => "ip6",
    };
    write!(w, "{kw} {fam} to ")?;
    match to {
        NatTarget::Addr { addr, port } => match (addr, port) {
            (Value::Ipv6(a), Some(p)) => write!(w, "[{a}]:{p}"),
            (a, Some(p)) => {
                value(w, a)?;
                write!(w, ":{p}")
            }
            (a, None) => value(w, a),
        },
        NatTarget::Map { key, map } => {
            map_key(w, key)?;
            write!(w, " map @{map}")
        }
    }
}

fn verdict<W: Write>(w: &mut W, v: &Verdict) -> fmt::Result {
    match v {
        Verdict::Accept => w.write_str("accept"),
        Verdict::Drop => w.write_str("drop"),
        Verdict::Continue => w.write_str("continue"),
        Verdict::Return => w.write_str("return"),
        Verdict::Jump(c) => write!(w, "jump {c}"),
        Verdict::Goto(c) => write!(w, "goto {c}"),
    }
}

const CT_STATE_NAMES: &[(u32, &str)] = &[
    (ct_state::INVALID, "invalid"),
    (ct_state::ESTABLISHED, "established"),
    (ct_state::RELATED, "related"),
    (ct_state::NEW, "new"),
    (ct_state::UNTRACKED, "untracked"),
];

const CT_STATUS_NAMES: &[(u32, &str)] = &[
    (1, "expected"),
    (1 << 1, "seen-reply"),
    (1 << 2, "assured"),
    (1 << 3, "confirmed"),
    (ct_status::SNAT, "snat"),
    (ct_status::DNAT, "dnat"),
    (1 << 9, "dying"),
];

/// The names of the bits of `mask`, or `None` when it is zero or has a bit
/// without a name (then it renders as a hex number).
fn bit_names(mask: u32, table: &[(u32, &'static str)]) -> Option<Vec<&'static str>> {
    let named: u32 = table.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    if mask == 0 || mask & !named != 0 {
        return None;
    }
    Some(
        table
            .iter()
            .filter(|(b, _)| mask & b != 0)
            .map(|(_, n)| *n)
            .collect(),
    )
}

fn value<W: Write>(w: &mut W, v: &Value) -> fmt::Result {
    match v {
        Value::Ipv4(a) => write!(w, "{a}"),
        Value::Ipv6(a) => write!(w, "{a}"),
        Value::Proto(p) => match *p {
            proto::TCP => w.write_str("tcp"),
            proto::UDP => w.write_str("udp"),
            proto::SCTP => w.write_str("sctp"),
            proto::ICMP => w.write_str("icmp"),
            proto::ICMPV6 => w.write_str("ipv6-icmp"),
            p => write!(w, "{p}"),
        },
        Value::Port(p) => write!(w, "{p}"),
        Value::Mark(m) => write!(w, "{m:#010x}"),
        Value::IfName(n) => quoted(w, n, MAX_IFNAME_LEN),
        Value::NfProto(p) => match *p {
            2 => w.write_str("ipv4"),
            10 => w.write_str("ipv6"),
            p => write!(w, "{p}"),
        },
        Value::CtState(bits) => flag_value(w, *bits, CT_STATE_NAMES),
        Value::CtStatus(bits) => flag_value(w, *bits, CT_STATUS_NAMES),
        Value::AddrType(t) => match addr_type_name(*t) {
            Some(n) => w.write_str(n),
            None => write!(w, "{t}"),
        },
    }
}

/// An exact flag value: `established`, `established|related`, or hex.
fn flag_value<W: Write>(w: &mut W, bits: u32, table: &[(u32, &'static str)]) -> fmt::Result {
    match bit_names(bits, table) {
        Some(n) => w.write_str(&n.join("|")),
        None => write!(w, "{bits:#010x}"),
    }
}

fn addr_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "unspec",
        addr_type::UNICAST => "unicast",
        addr_type::LOCAL => "local",
        addr_type::BROADCAST => "broadcast",
        4 => "anycast",
        addr_type::MULTICAST => "multicast",
        6 => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        _ => return None,
    })
}

/// A key part: a value, a CIDR prefix when the range is exactly one, or `lo-hi`.
fn key_part<W: Write>(w: &mut W, k: &KeyPart) -> fmt::Result {
    match k {
        KeyPart::Value(v) => value(w, v),
        KeyPart::Range(lo, hi) => {
            if let Some((addr, len)) = as_prefix(lo, hi) {
                return write!(w, "{addr}/{len}");
            }
            value(w, lo)?;
            w.write_char('-')?;
            value(w, hi)
        }
    }
}

/// `Some((network, len))` when `lo..=hi` is exactly one CIDR prefix.
fn as_prefix(lo: &Value, hi: &Value) -> Option<(String, u32)> {
    match (lo, hi) {
        (Value::Ipv4(l), Value::Ipv4(h)) => {
            let (l, h) = (u32::from(*l), u32::from(*h));
            let host = l ^ h;
            (host & host.wrapping_add(1) == 0 && l & host == 0 && h & host == host)
                .then(|| (Ipv4Addr::from(l).to_string(), 32 - host.count_ones()))
        }
        (Value::Ipv6(l), Value::Ipv6(h)) => {
            let (l, h) = (u128::from(*l), u128::from(*h));
            let host = l ^ h;
            (host & host.wrapping_add(1) == 0 && l & host == 0 && h & host == host)
                .then(|| (Ipv6Addr::from(l).to_string(), 128 - host.count_ones()))
        }
        _ => None,
    }
}

/// A duration as `nft` prints it: `3h`, `1h30m`, `1d2h3m4s5ms`; zero is `0s`.
fn duration<W: Write>(w: &mut W, d: Duration) -> fmt::Result {
    let mut ms = d.as_millis();
    if ms == 0 {
        return w.write_str("0s");
    }
    for (unit, name) in [
        (86_400_000u128, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ] {
        if ms >= unit {
            write!(w, "{}{name}", ms / unit)?;
            ms %= unit;
        }
    }
    Ok(())
}

/// A quoted string, sanitised (see [`sanitize_text`]).
fn quoted<W: Write>(w: &mut W, s: &str, max: usize) -> fmt::Result {
    w.write_char('"')?;
    w.write_str(&sanitize_text(s, max))?;
    w.write_char('"')
}

fn join<W: Write, T>(
    w: &mut W,
    items: &[T],
    sep: &str,
    mut each: impl FnMut(&mut W, &T) -> fmt::Result,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            w.write_str(sep)?;
        }
        each(w, item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_ranges() {
        let mut s = String::new();
        key_part(&mut s, &KeyPart::prefix_v4("10.1.2.3".parse().unwrap(), 8)).unwrap();
        assert_eq!(s, "10.0.0.0/8");
        s.clear();
        key_part(&mut s, &KeyPart::prefix_v4("0.0.0.0".parse().unwrap(), 0)).unwrap();
        assert_eq!(s, "0.0.0.0/0");
        s.clear();
        key_part(&mut s, &KeyPart::prefix_v6("fd00::".parse().unwrap(), 64)).unwrap();
        assert_eq!(s, "fd00::/64");
        s.clear();
        let r = KeyPart::Range(
            Value::Ipv4("10.0.0.1".parse().unwrap()),
            Value::Ipv4("10.0.0.9".parse().unwrap()),
        );
        key_part(&mut s, &r).unwrap();
        assert_eq!(s, "10.0.0.1-10.0.0.9");
        s.clear();
        key_part(&mut s, &KeyPart::Range(Value::Port(80), Value::Port(90))).unwrap();
        assert_eq!(s, "80-90");
    }

    #[test]
    fn durations() {
        let f = |d| {
            let mut s = String::new();
            duration(&mut s, d).unwrap();
            s
        };
        assert_eq!(f(Duration::from_secs(10800)), "3h");
        assert_eq!(f(Duration::from_secs(5400)), "1h30m");
        assert_eq!(f(Duration::from_millis(93_784_005)), "1d2h3m4s5ms");
        assert_eq!(f(Duration::ZERO), "0s");
    }

    #[test]
    fn strings_are_sanitised() {
        assert_eq!(sanitize_text("a\"b$c\nd", 128), "a'bSc d");
        let long = "é".repeat(100); // 200 bytes
        let cut = sanitize_text(&long, MAX_COMMENT_LEN);
        assert_eq!(cut.len(), 128);
        assert!(matches!(sanitize_text("fine", 128), Cow::Borrowed(_)));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("pod-ingress_1.a/b"));
        assert!(!is_valid_name("1abc"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name(""));
    }
}
