//! Set headers and elements → libnftnl objects.
//!
//! Elements follow nft's wire conventions so `nft list` prints what `nft -f` would
//! have loaded: a plain interval set stores each range as a start element and an
//! end element `hi + 1` flagged INTERVAL_END (none when the range reaches the top);
//! a concatenated interval set (pipapo) stores `key` = lows and `key_end` = highs.

use nftnl::nftnl_sys as sys;

use super::consts::*;
use super::encode_expr::{check_name, check_str, verdict_code};
use super::sys::{NlElem, NlSet};
use super::types::*;
use super::udata::{self, Udata};
use crate::model::{DataType, ElemData, ElemKey, ElemValue, KeyPart, Set, SetData};

type R<T> = Result<T, String>;

/// Set flags as the kernel sees them.
pub(crate) fn set_flags(s: &Set) -> u32 {
    let mut f = 0;
    if s.flags.interval {
        f |= NFT_SET_INTERVAL;
    }
    if s.data.is_some() {
        f |= NFT_SET_MAP;
    }
    if s.flags.timeout {
        f |= NFT_SET_TIMEOUT;
    }
    if s.flags.dynamic {
        f |= NFT_SET_EVAL;
    }
    if concat_interval(s) {
        // Field lengths go along (pipapo); the kernel rejects them without CONCAT.
        // Plain concatenated keys are hashed and carry neither, as with nft.
        f |= NFT_SET_CONCAT;
    }
    f
}

fn concat_interval(s: &Set) -> bool {
    s.flags.interval && s.key.len() > 1
}

pub(crate) fn kinds(ts: &[DataType]) -> Vec<Kind> {
    ts.iter().map(|t| Kind::of_type(*t)).collect()
}

/// The header of `s` (no elements) for NEWSET.
pub(crate) fn set_header(table: &str, s: &Set, id: u32) -> R<NlSet> {
    check_name(&s.name)?;
    if s.key.is_empty() {
        return Err("set without key type".into());
    }
    if s.flags.interval && s.key.len() == 1 && Kind::of_type(s.key[0]).host_u32() {
        return Err("interval sets of host-byte-order types (mark) are not supported".into());
    }
    if let Some(c) = &s.comment {
        check_str(c, COMMENT_MAXLEN, "comment")?;
    }
    let key_kinds = kinds(&s.key);
    let mut n = NlSet::new();
    n.set_str(sys::NFTNL_SET_TABLE, table);
    n.set_str(sys::NFTNL_SET_NAME, &s.name);
    n.set_u32(sys::NFTNL_SET_ID, id);
    n.set_u32(sys::NFTNL_SET_FLAGS, set_flags(s));
    n.set_u32(sys::NFTNL_SET_KEY_TYPE, concat_type_id(&s.key));
    n.set_u32(sys::NFTNL_SET_KEY_LEN, concat_len(&key_kinds) as u32);
    if concat_interval(s) {
        // Field lengths tell the kernel where concatenated fields start (pipapo).
        let lens: Vec<u8> = key_kinds.iter().map(|k| k.len() as u8).collect();
        n.set(sys::NFTNL_SET_DESC_CONCAT, &lens);
    }
    let mut ud = Udata::new();
    ud.put_u32(
        sys::NFTNL_UDATA_SET_KEYBYTEORDER as u8,
        if s.key.len() == 1 {
            byteorder(s.key[0])
        } else {
            0
        },
    );
    match &s.data {
        None => {}
        Some(SetData::Verdict) => {
            n.set_u32(sys::NFTNL_SET_DATA_TYPE, NFT_DATA_VERDICT);
        }
        Some(SetData::Values(ts)) => {
            if ts.is_empty() {
                return Err("map without data type".into());
            }
            n.set_u32(sys::NFTNL_SET_DATA_TYPE, concat_type_id(ts));
            n.set_u32(sys::NFTNL_SET_DATA_LEN, concat_len(&kinds(ts)) as u32);
            ud.put_u32(
                sys::NFTNL_UDATA_SET_DATABYTEORDER as u8,
                if ts.len() == 1 { byteorder(ts[0]) } else { 0 },
            );
        }
    }
    if let Some(t) = s.timeout {
        n.set_u64(sys::NFTNL_SET_TIMEOUT, millis(t)?);
    }
    if let Some(c) = &s.comment {
        ud.put_strz(sys::NFTNL_UDATA_SET_COMMENT as u8, c);
    }
    n.set(sys::NFTNL_SET_USERDATA, &ud.into_bytes());
    Ok(n)
}

pub(crate) fn millis(t: std::time::Duration) -> R<u64> {
    u64::try_from(t.as_millis()).map_err(|_| "timeout too large".to_string())
}

/// One kernel element, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElemSpec {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub flags: u32,
    pub data: Option<Vec<u8>>,
    pub verdict: Option<(i32, Option<String>)>,
    pub timeout_ms: Option<u64>,
    pub udata: Option<Vec<u8>>,
}

impl ElemSpec {
    fn key(key: Vec<u8>) -> Self {
        ElemSpec {
            key,
            key_end: None,
            flags: 0,
            data: None,
            verdict: None,
            timeout_ms: None,
            udata: None,
        }
    }

    /// Upper bound of its encoded size, to cut element messages into chunks.
    pub fn size_hint(&self) -> usize {
        64 + self.key.len()
            + self.key_end.as_ref().map_or(0, Vec::len)
            + self.data.as_ref().map_or(0, Vec::len)
            + self
                .verdict
                .as_ref()
                .and_then(|v| v.1.as_ref())
                .map_or(0, |c| c.len() + 8)
            + self.udata.as_ref().map_or(0, Vec::len)
            + 32
    }

    pub fn to_nl(&self) -> NlElem {
        let mut e = NlElem::new();
        e.set(sys::NFTNL_SET_ELEM_KEY, &self.key);
        if let Some(k) = &self.key_end {
            e.set(sys::NFTNL_SET_ELEM_KEY_END, k);
        }
        if self.flags != 0 {
            e.set_u32(sys::NFTNL_SET_ELEM_FLAGS, self.flags);
        }
        if let Some(d) = &self.data {
            e.set(sys::NFTNL_SET_ELEM_DATA, d);
        }
        if let Some((code, chain)) = &self.verdict {
            e.set_u32(sys::NFTNL_SET_ELEM_VERDICT, *code as u32);
            if let Some(c) = chain {
                e.set_str(sys::NFTNL_SET_ELEM_CHAIN, c);
            }
        }
        if let Some(t) = self.timeout_ms {
            e.set_u64(sys::NFTNL_SET_ELEM_TIMEOUT, t);
        }
        if let Some(u) = &self.udata {
            e.set(sys::NFTNL_SET_ELEM_USERDATA, u);
        }
        e
    }
}

/// Kernel elements for adding (`value: Some`) or deleting (`None`) one model element.
pub(crate) fn elem_specs(set: &Set, key: &ElemKey, value: Option<&ElemValue>) -> R<Vec<ElemSpec>> {
    if key.len() != set.key.len() {
        return Err(format!(
            "key has {} parts, set {:?} has {} fields",
            key.len(),
            set.name,
            set.key.len()
        ));
    }
    let mut lo = Vec::new();
    let mut hi = Vec::new();
    for (part, t) in key.iter().zip(&set.key) {
        let (a, b) = match part {
            KeyPart::Value(v) => (v, v),
            KeyPart::Range(a, b) => {
                if !set.flags.interval {
                    return Err(format!("range in non-interval set {:?}", set.name));
                }
                (a, b)
            }
        };
        for v in [a, b] {
            if Kind::of_value(v) != Kind::of_type(*t) {
                return Err(format!("{v:?} is not a {t:?}"));
            }
        }
        if let super::super::model::Value::IfName(n) = a {
            if n.is_empty() || n.len() >= IFNAMSIZ {
                return Err(format!("bad interface name {n:?}"));
            }
        }
        let (a, b) = (value_bytes(a), value_bytes(b));
        if a > b {
            return Err(format!("empty range in key {key:?}"));
        }
        lo.push(a);
        hi.push(b);
    }
    let mut first = ElemSpec::key(concat_bytes(&lo));
    let mut end = None;
    if set.flags.interval {
        if set.key.len() > 1 {
            first.key_end = Some(concat_bytes(&hi));
        } else if let Some(next) = be_increment(&hi[0]) {
            let mut e = ElemSpec::key(next);
            e.flags = NFT_SET_ELEM_INTERVAL_END;
            end = Some(e);
        }
    }
    if let Some(v) = value {
        match (&set.data, &v.data) {
            (None, None) => {}
            (Some(SetData::Verdict), Some(ElemData::Verdict(verdict))) => {
                first.verdict = Some(verdict_code(verdict));
            }
            (Some(SetData::Values(ts)), Some(ElemData::Values(vals))) => {
                if vals.len() != ts.len() {
                    return Err(format!(
                        "{} data values for {} data fields",
                        vals.len(),
                        ts.len()
                    ));
                }
                let mut parts = Vec::new();
                for (v, t) in vals.iter().zip(ts) {
                    if Kind::of_value(v) != Kind::of_type(*t) {
                        return Err(format!("data {v:?} is not a {t:?}"));
                    }
                    parts.push(value_bytes(v));
                }
                first.data = Some(concat_bytes(&parts));
            }
            (want, got) => {
                return Err(format!(
                    "element data {got:?} does not fit set {:?} ({want:?})",
                    set.name
                ))
            }
        }
        if let Some(t) = v.timeout {
            if !set.flags.timeout {
                return Err(format!(
                    "element timeout in set {:?} without timeout flag",
                    set.name
                ));
            }
            first.timeout_ms = Some(millis(t)?);
        }
        if let Some(c) = &v.comment {
            check_str(c, COMMENT_MAXLEN, "comment")?;
        }
        first.udata = udata::comment(sys::NFTNL_UDATA_SET_ELEM_COMMENT as u8, &v.comment);
    }
    Ok(std::iter::once(first).chain(end).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    #[test]
    fn interval_elements_use_end_markers() {
        let set = Set {
            name: "cidrs".into(),
            key: vec![DataType::Ipv4Addr],
            flags: SetFlags {
                interval: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let k = vec![KeyPart::prefix_v4("10.0.0.0".parse().unwrap(), 8)];
        let specs = elem_specs(&set, &k, None).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].key, vec![10, 0, 0, 0]);
        assert_eq!(specs[1].key, vec![11, 0, 0, 0]);
        assert_eq!(specs[1].flags, NFT_SET_ELEM_INTERVAL_END);
        let top = vec![KeyPart::prefix_v4("255.0.0.0".parse().unwrap(), 8)];
        assert_eq!(elem_specs(&set, &top, None).unwrap().len(), 1);
    }

    #[test]
    fn concat_interval_uses_key_end() {
        let set = Set {
            name: "c".into(),
            key: vec![DataType::Ipv4Addr, DataType::InetService],
            flags: SetFlags {
                interval: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let k = vec![
            KeyPart::prefix_v4("10.0.0.0".parse().unwrap(), 24),
            KeyPart::Value(Value::Port(80)),
        ];
        let specs = elem_specs(&set, &k, None).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].key, vec![10, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(specs[0].key_end, Some(vec![10, 0, 0, 255, 0, 80, 0, 0]));
    }
}
