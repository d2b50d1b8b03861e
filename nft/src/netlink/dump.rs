//! Read-back: dump one table from the kernel into the model.

use std::collections::BTreeMap;
use std::time::Duration;

use nftnl::nftnl_sys as sys;

use super::consts::*;
use super::decode::{decode_rule, verdict_of};
use super::encode::family_code;
use super::socket::Conn;
use super::sys::{
    parse_chain, parse_elems, parse_rule, parse_set, parse_table, AlignedMsg, ElemRef, MsgWriter,
    NlChain, NlRule, NlSet, NlTable, Payload,
};
use super::types::*;
use super::udata;
use super::Error;
use crate::model::{
    BaseChain, Chain, ChainPolicy, ChainType, ElemData, ElemKey, ElemValue, Family, Hook, KeyPart,
    Rule, Set, SetData, SetFlags, Table,
};

type R<T> = Result<T, Error>;

impl Conn {
    /// Read table `name` of `family` back into the model: chains, rules (decoded to
    /// statements), sets with their elements, comments. `Ok(None)` if it does not
    /// exist. A rule or set the model cannot express is an error naming it.
    pub fn read_table(&mut self, family: Family, name: &str) -> R<Option<Table>> {
        let fam = family_code(family);
        let mut t = NlTable::new();
        t.set_str(sys::NFTNL_TABLE_NAME, name);
        let mut table = None;
        let found = self.one(NFT_MSG_GETTABLE, fam, false, Payload::Table(&t), |m| {
            if let Some(t) = parse_table(&m) {
                table = Some(Table {
                    family,
                    name: name.to_string(),
                    comment: t
                        .get(sys::NFTNL_TABLE_USERDATA)
                        .and_then(|u| udata::get_str(u, sys::NFTNL_UDATA_TABLE_COMMENT as u8)),
                    ..Default::default()
                });
            }
        })?;
        let Some(mut table) = table.filter(|_| found) else {
            return Ok(None);
        };

        let mut c = NlChain::new();
        c.set_str(sys::NFTNL_CHAIN_TABLE, name);
        let mut chains = Vec::new();
        self.one(NFT_MSG_GETCHAIN, fam, true, Payload::Chain(&c), |m| {
            chains.push(parse_chain(&m));
        })?;
        for c in chains {
            let c = c.ok_or_else(|| Error::Decode("unparsable chain message".into()))?;
            if c.get_str(sys::NFTNL_CHAIN_TABLE).as_deref() != Some(name) {
                continue;
            }
            let chain = decode_chain(&c)?;
            table.chains.insert(chain.name.clone(), chain);
        }

        let mut s = NlSet::new();
        s.set_str(sys::NFTNL_SET_TABLE, name);
        let mut sets = Vec::new();
        self.one(NFT_MSG_GETSET, fam, true, Payload::Set(&s), |m| {
            sets.push(parse_set(&m));
        })?;
        for s in sets {
            let s = s.ok_or_else(|| Error::Decode("unparsable set message".into()))?;
            if s.get_str(sys::NFTNL_SET_TABLE).as_deref() != Some(name) {
                continue;
            }
            let mut set = decode_set_header(&s)?;
            self.read_elements(fam, name, &mut set)?;
            table.sets.insert(set.name.clone(), set);
        }

        let mut r = NlRule::new();
        r.set_str(sys::NFTNL_RULE_TABLE, name);
        let mut rules = Vec::new();
        self.one(NFT_MSG_GETRULE, fam, true, Payload::Rule(&r), |m| {
            rules.push(parse_rule(&m));
        })?;
        for r in rules {
            let r = r.ok_or_else(|| Error::Decode("unparsable rule message".into()))?;
            if r.get_str(sys::NFTNL_RULE_TABLE).as_deref() != Some(name) {
                continue;
            }
            let chain = r.get_str(sys::NFTNL_RULE_CHAIN).unwrap_or_default();
            let handle = r.get_u64(sys::NFTNL_RULE_HANDLE).unwrap_or(0);
            let exprs = decode_rule(family, &r.vms()).map_err(|msg| Error::UnknownRule {
                chain: chain.clone(),
                handle,
                msg,
            })?;
            let comment = r
                .get(sys::NFTNL_RULE_USERDATA)
                .and_then(|u| udata::get_str(u, sys::NFTNL_UDATA_RULE_COMMENT as u8));
            table
                .chains
                .get_mut(&chain)
                .ok_or_else(|| Error::Decode(format!("rule in unknown chain {chain}")))?
                .rules
                .push(Rule { exprs, comment });
        }
        let headers = table
            .sets
            .iter()
            .map(|(n, s)| {
                let mut h = s.clone();
                h.elements.clear();
                (n.clone(), h)
            })
            .collect();
        self.remember_sets(family, name, headers);
        Ok(Some(table))
    }

    /// One set with its elements, `None` if absent. Cheaper than [`Conn::read_table`]
    /// when only one set matters, e.g. to sweep entries the kernel added to a
    /// dynamic map.
    pub fn read_set(&mut self, family: Family, table: &str, name: &str) -> R<Option<Set>> {
        let Some(mut set) = self.get_set(family, table, name)? else {
            return Ok(None);
        };
        self.read_elements(family_code(family), table, &mut set)?;
        Ok(Some(set))
    }

    /// The header of one set (elements not read), `None` if absent.
    pub(crate) fn get_set(&mut self, family: Family, table: &str, name: &str) -> R<Option<Set>> {
        let mut s = NlSet::new();
        s.set_str(sys::NFTNL_SET_TABLE, table);
        s.set_str(sys::NFTNL_SET_NAME, name);
        let mut got = None;
        let found = self.one(
            NFT_MSG_GETSET,
            family_code(family),
            false,
            Payload::Set(&s),
            |m| {
                got = parse_set(&m);
            },
        )?;
        match got.filter(|_| found) {
            Some(s) => Ok(Some(decode_set_header(&s)?)),
            None => Ok(None),
        }
    }

    fn read_elements(&mut self, fam: u8, table: &str, set: &mut Set) -> R<()> {
        let mut s = NlSet::new();
        s.set_str(sys::NFTNL_SET_TABLE, table);
        s.set_str(sys::NFTNL_SET_NAME, &set.name);
        let mut msgs = Vec::new();
        self.one(NFT_MSG_GETSETELEM, fam, true, Payload::Elems(&s), |m| {
            msgs.push(parse_elems(&m));
        })?;
        let mut raw = Vec::new();
        for m in msgs {
            let m =
                m.ok_or_else(|| Error::Decode(format!("unparsable elements of set {}", set.name)))?;
            m.for_each_elem(|e| raw.push(RawElem::of(&e)));
        }
        set.elements = decode_elements(set, raw)
            .map_err(|m| Error::Decode(format!("set {}: {m}", set.name)))?;
        Ok(())
    }

    /// One request; `f` sees each reply message. `Ok(false)` on ENOENT.
    fn one(
        &mut self,
        ty: u16,
        fam: u8,
        dump: bool,
        p: Payload<'_>,
        mut f: impl FnMut(AlignedMsg<'_>),
    ) -> R<bool> {
        let mut w = MsgWriter::new();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        w.push(ty, fam, flags, 0, p);
        let mut bad = false;
        let found = self.request(&w.out, dump, |m| match AlignedMsg::new(m) {
            Some(m) => f(m),
            None => bad = true,
        })?;
        if bad {
            return Err(Error::Decode(
                "misaligned or truncated netlink message".into(),
            ));
        }
        Ok(found)
    }
}

fn decode_chain(c: &NlChain) -> R<Chain> {
    let name = c.get_str(sys::NFTNL_CHAIN_NAME).unwrap_or_default();
    let bad = |m: &str| Error::Decode(format!("chain {name}: {m}"));
    let base = match c.get_u32(sys::NFTNL_CHAIN_HOOKNUM) {
        None => None,
        Some(h) => Some(BaseChain {
            kind: match c.get_str(sys::NFTNL_CHAIN_TYPE).as_deref() {
                Some("filter") => ChainType::Filter,
                Some("nat") => ChainType::Nat,
                Some("route") => ChainType::Route,
                other => return Err(bad(&format!("chain type {other:?}"))),
            },
            hook: match h {
                NF_INET_PRE_ROUTING => Hook::Prerouting,
                NF_INET_LOCAL_IN => Hook::Input,
                NF_INET_FORWARD => Hook::Forward,
                NF_INET_LOCAL_OUT => Hook::Output,
                NF_INET_POST_ROUTING => Hook::Postrouting,
                _ => return Err(bad(&format!("hook {h}"))),
            },
            priority: c.get_u32(sys::NFTNL_CHAIN_PRIO).unwrap_or(0) as i32,
            policy: match c.get_u32(sys::NFTNL_CHAIN_POLICY).map(|p| p as i32) {
                Some(NF_DROP) => ChainPolicy::Drop,
                _ => ChainPolicy::Accept,
            },
        }),
    };
    Ok(Chain {
        name,
        base,
        comment: c
            .get(sys::NFTNL_CHAIN_USERDATA)
            .and_then(|u| udata::get_str(u, sys::NFTNL_UDATA_CHAIN_COMMENT as u8)),
        rules: Vec::new(),
    })
}

const NFT_SET_ANONYMOUS: u32 = 0x1;

fn decode_set_header(s: &NlSet) -> R<Set> {
    let name = s.get_str(sys::NFTNL_SET_NAME).unwrap_or_default();
    let bad = |m: String| Error::Decode(format!("set {name}: {m}"));
    let flags = s.get_u32(sys::NFTNL_SET_FLAGS).unwrap_or(0);
    if flags & NFT_SET_ANONYMOUS != 0 {
        return Err(bad("anonymous sets are not part of the model".into()));
    }
    let key_type = s.get_u32(sys::NFTNL_SET_KEY_TYPE).unwrap_or(0);
    let key_len = s.get_u32(sys::NFTNL_SET_KEY_LEN).unwrap_or(0) as usize;
    let key = types_of_id(key_type, key_len)
        .ok_or_else(|| bad(format!("key type {key_type:#x} / {key_len} bytes")))?;
    let data = if flags & NFT_SET_MAP != 0 {
        let t = s.get_u32(sys::NFTNL_SET_DATA_TYPE).unwrap_or(0);
        if t == NFT_DATA_VERDICT {
            Some(SetData::Verdict)
        } else {
            let len = s.get_u32(sys::NFTNL_SET_DATA_LEN).unwrap_or(0) as usize;
            Some(SetData::Values(types_of_id(t, len).ok_or_else(|| {
                bad(format!("data type {t:#x} / {len} bytes"))
            })?))
        }
    } else {
        None
    };
    Ok(Set {
        name: name.clone(),
        key,
        data,
        flags: SetFlags {
            interval: flags & NFT_SET_INTERVAL != 0,
            timeout: flags & NFT_SET_TIMEOUT != 0,
            dynamic: flags & NFT_SET_EVAL != 0,
        },
        timeout: s
            .get_u64(sys::NFTNL_SET_TIMEOUT)
            .filter(|t| *t != 0)
            .map(Duration::from_millis),
        comment: s
            .get(sys::NFTNL_SET_USERDATA)
            .and_then(|u| udata::get_str(u, sys::NFTNL_UDATA_SET_COMMENT as u8)),
        elements: BTreeMap::new(),
    })
}

/// An element as the kernel dumped it.
#[derive(Debug, Clone)]
struct RawElem {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    flags: u32,
    verdict: Option<(i32, Option<String>)>,
    data: Option<Vec<u8>>,
    timeout_ms: Option<u64>,
    comment: Option<String>,
}

impl RawElem {
    fn of(e: &ElemRef<'_>) -> Self {
        RawElem {
            key: e
                .get(sys::NFTNL_SET_ELEM_KEY)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
            key_end: e.get(sys::NFTNL_SET_ELEM_KEY_END).map(<[u8]>::to_vec),
            flags: e.get_u32(sys::NFTNL_SET_ELEM_FLAGS).unwrap_or(0),
            verdict: e
                .get_u32(sys::NFTNL_SET_ELEM_VERDICT)
                .map(|v| (v as i32, e.get_str(sys::NFTNL_SET_ELEM_CHAIN))),
            data: e.get(sys::NFTNL_SET_ELEM_DATA).map(<[u8]>::to_vec),
            timeout_ms: e.get_u64(sys::NFTNL_SET_ELEM_TIMEOUT),
            comment: e
                .get(sys::NFTNL_SET_ELEM_USERDATA)
                .and_then(|u| udata::get_str(u, sys::NFTNL_UDATA_SET_ELEM_COMMENT as u8)),
        }
    }
}

fn decode_elements(
    set: &Set,
    mut raw: Vec<RawElem>,
) -> Result<BTreeMap<ElemKey, ElemValue>, String> {
    let kinds: Vec<Kind> = set.key.iter().map(|t| Kind::of_type(*t)).collect();
    let value_of = |r: &RawElem| -> Result<ElemValue, String> {
        let data = match (&set.data, &r.verdict, &r.data) {
            (None, _, _) => None,
            (Some(SetData::Verdict), Some((code, chain)), _) => {
                Some(ElemData::Verdict(verdict_of(*code, chain.clone())?))
            }
            (Some(SetData::Values(ts)), _, Some(d)) => {
                let ks: Vec<Kind> = ts.iter().map(|t| Kind::of_type(*t)).collect();
                Some(ElemData::Values(
                    split_concat(&ks, d).ok_or("element data does not fit the map")?,
                ))
            }
            _ => return Err("map element without data".into()),
        };
        // The kernel reports the set's default timeout on elements that use it.
        let default = set.timeout.map(|t| t.as_millis() as u64);
        let timeout = r
            .timeout_ms
            .filter(|t| *t != 0 && Some(*t) != default)
            .map(Duration::from_millis);
        Ok(ElemValue {
            data,
            timeout,
            comment: r.comment.clone(),
        })
    };
    let split = |b: &[u8]| split_concat(&kinds, b).ok_or_else(|| format!("key {b:?} does not fit"));
    let mut out = BTreeMap::new();
    if !set.flags.interval {
        for r in &raw {
            let key = split(&r.key)?.into_iter().map(KeyPart::Value).collect();
            out.insert(key, value_of(r)?);
        }
        return Ok(out);
    }
    if set.key.len() > 1 {
        for r in &raw {
            let lo = split(&r.key)?;
            let hi = split(r.key_end.as_deref().unwrap_or(&r.key))?;
            let key = lo
                .into_iter()
                .zip(hi)
                .map(|(a, b)| KeyPart::range(a, b))
                .collect();
            out.insert(key, value_of(r)?);
        }
        return Ok(out);
    }
    // Plain interval set: sort by key, end markers before starts at equal keys
    // (an end marker closes the range before an adjacent one), then pair them.
    let is_end = |r: &RawElem| r.flags & NFT_SET_ELEM_INTERVAL_END != 0;
    raw.sort_by(|a, b| a.key.cmp(&b.key).then(is_end(b).cmp(&is_end(a))));
    let top = vec![0xffu8; kinds[0].len()];
    let mut i = 0;
    while i < raw.len() {
        let r = &raw[i];
        if is_end(r) {
            // An end without a start (nft's leading "0 interval-end"): skip.
            i += 1;
            continue;
        }
        let hi = match raw.get(i + 1) {
            Some(n) if is_end(n) => {
                i += 1;
                be_decrement(&n.key).ok_or("interval end at zero")?
            }
            _ => top.clone(),
        };
        let lo = value_from_bytes(kinds[0], &r.key).ok_or("bad interval start")?;
        let hi = value_from_bytes(kinds[0], &hi).ok_or("bad interval end")?;
        out.insert(vec![KeyPart::range(lo, hi)], value_of(r)?);
        i += 1;
    }
    Ok(out)
}
