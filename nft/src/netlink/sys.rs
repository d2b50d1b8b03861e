//! The only place with `unsafe`: owned wrappers over libnftnl objects, message
//! building/parsing, and `Vm` ↔ `nftnl_expr` conversion.
//!
//! Every libnftnl setter copies its input, so wrappers never lend Rust memory to C
//! beyond a call. Objects are freed on drop; ownership moves into C only through
//! `NlRule::add_expr` and `NlSet::add_elem`, which forget the Rust handle.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

use super::vm::{Imm, Vm};

macro_rules! nl_object {
    ($(#[$m:meta])* $name:ident, $raw:ident, $alloc:ident, $free:ident, $set:ident, $get:ident) => {
        $(#[$m])*
        pub(crate) struct $name(NonNull<sys::$raw>);

        // Generic accessors: each object type uses a different subset.
        #[allow(dead_code)]
        impl $name {
            pub fn new() -> Self {
                // SAFETY: the allocator returns a fresh object we own, or NULL on OOM.
                let p = unsafe { sys::$alloc() };
                $name(NonNull::new(p).expect("libnftnl: out of memory"))
            }

            pub fn as_ptr(&self) -> *mut sys::$raw {
                self.0.as_ptr()
            }

            /// Set attribute `attr` to a copy of `data` (libnftnl validates lengths of
            /// fixed-size attributes; a mismatch is a bug in this module).
            pub fn set(&mut self, attr: u32, data: &[u8]) {
                // SAFETY: the object is live and exclusively ours; `data` is valid for
                // `len` bytes for the duration of the call and libnftnl copies it.
                let rc = unsafe {
                    sys::$set(self.as_ptr(), attr as u16, data.as_ptr().cast(), data.len() as u32)
                };
                debug_assert!(rc >= 0, "libnftnl rejected attribute {attr}");
            }

            pub fn get(&self, attr: u32) -> Option<&[u8]> {
                let mut len = 0u32;
                // SAFETY: the object is live; the returned pointer (if any) points into
                // it and stays valid while `self` is borrowed and unmodified.
                unsafe {
                    let p = sys::$get(self.as_ptr(), attr as u16, &mut len);
                    slice_of(p, len)
                }
            }

            pub fn set_u32(&mut self, attr: u32, v: u32) {
                self.set(attr, &v.to_ne_bytes());
            }

            pub fn set_u64(&mut self, attr: u32, v: u64) {
                self.set(attr, &v.to_ne_bytes());
            }

            pub fn set_str(&mut self, attr: u32, s: &str) {
                self.set(attr, &strz(s));
            }

            pub fn get_u32(&self, attr: u32) -> Option<u32> {
                self.get(attr).and_then(u32_of)
            }

            pub fn get_u64(&self, attr: u32) -> Option<u64> {
                self.get(attr).and_then(u64_of)
            }

            /// Strings are read up to their NUL: libnftnl reports wrong lengths for
            /// some (`NFTNL_CHAIN_TYPE` says 4).
            pub fn get_str(&self, attr: u32) -> Option<String> {
                let mut len = 0u32;
                // SAFETY: string attributes point to NUL-terminated strings owned by
                // the live object.
                unsafe {
                    let p = sys::$get(self.as_ptr(), attr as u16, &mut len);
                    cstr_of(p.cast())
                }
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: we own the object and nothing else refers to it.
                unsafe { sys::$free(self.as_ptr()) }
            }
        }
    };
}

nl_object!(
    NlTable,
    nftnl_table,
    nftnl_table_alloc,
    nftnl_table_free,
    nftnl_table_set_data,
    nftnl_table_get_data
);
nl_object!(
    NlChain,
    nftnl_chain,
    nftnl_chain_alloc,
    nftnl_chain_free,
    nftnl_chain_set_data,
    nftnl_chain_get_data
);
nl_object!(
    NlRule,
    nftnl_rule,
    nftnl_rule_alloc,
    nftnl_rule_free,
    nftnl_rule_set_data,
    nftnl_rule_get_data
);
nl_object!(
    NlSet,
    nftnl_set,
    nftnl_set_alloc,
    nftnl_set_free,
    nftnl_set_set_data,
    nftnl_set_get_data
);
nl_object!(
    NlElem,
    nftnl_set_elem,
    nftnl_set_elem_alloc,
    nftnl_set_elem_free,
    nftnl_set_elem_set,
    nftnl_set_elem_get
);
nl_object!(
    NlGen,
    nftnl_gen,
    nftnl_gen_alloc,
    nftnl_gen_free,
    nftnl_gen_set_data,
    nftnl_gen_get_data
);

/// # Safety
/// `p` is NULL or valid for `len` bytes for the returned lifetime.
unsafe fn slice_of<'a>(p: *const std::ffi::c_void, len: u32) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) })
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn cstr_of(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: guaranteed by the caller.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

fn strz(s: &str) -> Vec<u8> {
    // Interior NULs were rejected by the encoder's checks; cut defensively anyway.
    CString::new(s.split('\0').next().unwrap_or(""))
        .map(|c| c.into_bytes_with_nul())
        .unwrap_or_else(|_| vec![0])
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn u64_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?))
}

/// One kernel expression, built attribute by attribute.
pub(crate) struct NlExpr(NonNull<sys::nftnl_expr>);

impl NlExpr {
    fn new(name: &str) -> Self {
        let c = CString::new(name).expect("static expression name");
        // SAFETY: `c` is a valid C string; the result is owned by us (or NULL).
        let p = unsafe { sys::nftnl_expr_alloc(c.as_ptr()) };
        NlExpr(NonNull::new(p).expect("libnftnl: unknown expression or out of memory"))
    }

    fn set(&mut self, attr: u32, data: &[u8]) -> &mut Self {
        // SAFETY: live, owned expression; libnftnl copies `data`.
        let rc = unsafe {
            sys::nftnl_expr_set(
                self.0.as_ptr(),
                attr as u16,
                data.as_ptr().cast(),
                data.len() as u32,
            )
        };
        debug_assert!(rc >= 0, "libnftnl rejected expression attribute {attr}");
        self
    }

    fn u32(&mut self, attr: u32, v: u32) -> &mut Self {
        self.set(attr, &v.to_ne_bytes())
    }

    fn str(&mut self, attr: u32, s: &str) -> &mut Self {
        self.set(attr, &strz(s))
    }
}

impl Drop for NlExpr {
    fn drop(&mut self) {
        // SAFETY: we own the expression (it was not handed to a rule).
        unsafe { sys::nftnl_expr_free(self.0.as_ptr()) }
    }
}

impl NlRule {
    pub fn add_expr(&mut self, e: NlExpr) {
        // SAFETY: the rule takes ownership of the expression; forget our handle so
        // it is freed once, with the rule.
        unsafe { sys::nftnl_rule_add_expr(self.as_ptr(), e.0.as_ptr()) };
        std::mem::forget(e);
    }

    /// The rule's expressions as VM data.
    pub fn vms(&self) -> Vec<Vm> {
        let mut out = Vec::new();
        // SAFETY: the iterator borrows the live rule, which is not modified while it
        // exists; it is destroyed before returning.
        unsafe {
            let it = sys::nftnl_expr_iter_create(self.as_ptr());
            if it.is_null() {
                return out;
            }
            loop {
                let e = sys::nftnl_expr_iter_next(it);
                let Some(e) = NonNull::new(e) else { break };
                out.push(vm_of(ExprRef(e, PhantomData)));
            }
            sys::nftnl_expr_iter_destroy(it);
        }
        out
    }
}

impl NlSet {
    pub fn add_elem(&mut self, e: NlElem) {
        // SAFETY: the set takes ownership of the element; forget our handle.
        unsafe { sys::nftnl_set_elem_add(self.as_ptr(), e.as_ptr()) };
        std::mem::forget(e);
    }

    /// Visit the elements parsed into this set.
    pub fn for_each_elem(&self, mut f: impl FnMut(ElemRef<'_>)) {
        // SAFETY: the iterator borrows the live set, which is not modified while it
        // exists; elements are borrowed for the callback only.
        unsafe {
            let it = sys::nftnl_set_elems_iter_create(self.as_ptr());
            if it.is_null() {
                return;
            }
            loop {
                let e = sys::nftnl_set_elems_iter_next(it);
                let Some(e) = NonNull::new(e) else { break };
                f(ElemRef(e, PhantomData));
            }
            sys::nftnl_set_elems_iter_destroy(it);
        }
    }
}

/// A borrowed element of a parsed set.
pub(crate) struct ElemRef<'a>(NonNull<sys::nftnl_set_elem>, PhantomData<&'a NlSet>);

impl ElemRef<'_> {
    pub fn get(&self, attr: u32) -> Option<&[u8]> {
        let mut len = 0u32;
        // SAFETY: the element lives as long as the borrowed set.
        unsafe {
            slice_of(
                sys::nftnl_set_elem_get(self.0.as_ptr(), attr as u16, &mut len),
                len,
            )
        }
    }

    pub fn get_u32(&self, attr: u32) -> Option<u32> {
        self.get(attr).and_then(u32_of)
    }

    pub fn get_u64(&self, attr: u32) -> Option<u64> {
        self.get(attr).and_then(u64_of)
    }

    pub fn get_str(&self, attr: u32) -> Option<String> {
        let mut len = 0u32;
        // SAFETY: string attributes are NUL-terminated and owned by the element.
        unsafe {
            let p = sys::nftnl_set_elem_get(self.0.as_ptr(), attr as u16, &mut len);
            cstr_of(p.cast())
        }
    }
}

/// A borrowed expression of a parsed rule.
struct ExprRef<'a>(NonNull<sys::nftnl_expr>, PhantomData<&'a NlRule>);

impl ExprRef<'_> {
    fn get(&self, attr: u32) -> Option<&[u8]> {
        let mut len = 0u32;
        // SAFETY: the expression lives as long as the borrowed rule.
        unsafe {
            if !sys::nftnl_expr_is_set(self.0.as_ptr(), attr as u16) {
                return None;
            }
            slice_of(
                sys::nftnl_expr_get(self.0.as_ptr(), attr as u16, &mut len),
                len,
            )
        }
    }

    fn u32(&self, attr: u32) -> Option<u32> {
        self.get(attr).and_then(u32_of)
    }

    fn u32_or0(&self, attr: u32) -> u32 {
        self.u32(attr).unwrap_or(0)
    }

    fn str(&self, attr: u32) -> Option<String> {
        let mut len = 0u32;
        // SAFETY: string attributes are NUL-terminated and owned by the expression.
        unsafe {
            if !sys::nftnl_expr_is_set(self.0.as_ptr(), attr as u16) {
                return None;
            }
            cstr_of(sys::nftnl_expr_get(self.0.as_ptr(), attr as u16, &mut len).cast())
        }
    }

    fn data(&self, attr: u32) -> Vec<u8> {
        self.get(attr).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn name(&self) -> String {
        // SAFETY: NFTNL_EXPR_NAME is always set and points to a static C string.
        unsafe {
            let p = sys::nftnl_expr_get_str(self.0.as_ptr(), sys::NFTNL_EXPR_NAME as u16);
            if p.is_null() {
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Build the libnftnl expression for a VM instruction.
pub(crate) fn expr_of(vm: &Vm) -> NlExpr {
    use sys::*;
    let mut e;
    match vm {
        Vm::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            e = NlExpr::new("payload");
            e.u32(NFTNL_EXPR_PAYLOAD_DREG, *dreg)
                .u32(NFTNL_EXPR_PAYLOAD_BASE, *base)
                .u32(NFTNL_EXPR_PAYLOAD_OFFSET, *offset)
                .u32(NFTNL_EXPR_PAYLOAD_LEN, *len);
        }
        Vm::Meta { key, dreg } => {
            e = NlExpr::new("meta");
            e.u32(NFTNL_EXPR_META_KEY, *key)
                .u32(NFTNL_EXPR_META_DREG, *dreg);
        }
        Vm::MetaSet { key, sreg } => {
            e = NlExpr::new("meta");
            e.u32(NFTNL_EXPR_META_KEY, *key)
                .u32(NFTNL_EXPR_META_SREG, *sreg);
        }
        Vm::Ct { key, dreg, dir } => {
            e = NlExpr::new("ct");
            e.u32(NFTNL_EXPR_CT_KEY, *key)
                .u32(NFTNL_EXPR_CT_DREG, *dreg);
            if let Some(d) = dir {
                // libnftnl keeps the direction as one byte.
                e.set(NFTNL_EXPR_CT_DIR, &[*d]);
            }
        }
        Vm::CtSet { key, sreg } => {
            e = NlExpr::new("ct");
            e.u32(NFTNL_EXPR_CT_KEY, *key)
                .u32(NFTNL_EXPR_CT_SREG, *sreg);
        }
        Vm::Fib {
            flags,
            result,
            dreg,
        } => {
            e = NlExpr::new("fib");
            e.u32(NFTNL_EXPR_FIB_FLAGS, *flags)
                .u32(NFTNL_EXPR_FIB_RESULT, *result)
                .u32(NFTNL_EXPR_FIB_DREG, *dreg);
        }
        Vm::Cmp { sreg, op, data } => {
            e = NlExpr::new("cmp");
            e.u32(NFTNL_EXPR_CMP_SREG, *sreg)
                .u32(NFTNL_EXPR_CMP_OP, *op)
                .set(NFTNL_EXPR_CMP_DATA, data);
        }
        Vm::Range { sreg, op, from, to } => {
            e = NlExpr::new("range");
            e.u32(NFTNL_EXPR_RANGE_SREG, *sreg)
                .u32(NFTNL_EXPR_RANGE_OP, *op)
                .set(NFTNL_EXPR_RANGE_FROM_DATA, from)
                .set(NFTNL_EXPR_RANGE_TO_DATA, to);
        }
        Vm::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            e = NlExpr::new("bitwise");
            e.u32(NFTNL_EXPR_BITWISE_SREG, *sreg)
                .u32(NFTNL_EXPR_BITWISE_DREG, *dreg)
                .u32(NFTNL_EXPR_BITWISE_LEN, *len)
                .set(NFTNL_EXPR_BITWISE_MASK, mask)
                .set(NFTNL_EXPR_BITWISE_XOR, xor);
        }
        Vm::Byteorder {
            sreg,
            dreg,
            op,
            len,
            size,
        } => {
            e = NlExpr::new("byteorder");
            e.u32(NFTNL_EXPR_BYTEORDER_SREG, *sreg)
                .u32(NFTNL_EXPR_BYTEORDER_DREG, *dreg)
                .u32(NFTNL_EXPR_BYTEORDER_OP, *op)
                .u32(NFTNL_EXPR_BYTEORDER_LEN, *len)
                .u32(NFTNL_EXPR_BYTEORDER_SIZE, *size);
        }
        Vm::Lookup {
            sreg,
            dreg,
            set,
            inv,
        } => {
            e = NlExpr::new("lookup");
            e.u32(NFTNL_EXPR_LOOKUP_SREG, *sreg)
                .str(NFTNL_EXPR_LOOKUP_SET, set);
            if let Some(d) = dreg {
                e.u32(NFTNL_EXPR_LOOKUP_DREG, *d);
            }
            if *inv {
                e.u32(NFTNL_EXPR_LOOKUP_FLAGS, super::consts::NFT_LOOKUP_F_INV);
            }
        }
        Vm::Numgen {
            dreg,
            modulus,
            kind,
            offset,
        } => {
            e = NlExpr::new("numgen");
            e.u32(NFTNL_EXPR_NG_DREG, *dreg)
                .u32(NFTNL_EXPR_NG_MODULUS, *modulus)
                .u32(NFTNL_EXPR_NG_TYPE, *kind)
                .u32(NFTNL_EXPR_NG_OFFSET, *offset);
        }
        Vm::Immediate { dreg, data } => {
            e = NlExpr::new("immediate");
            e.u32(NFTNL_EXPR_IMM_DREG, *dreg);
            match data {
                Imm::Data(d) => {
                    e.set(NFTNL_EXPR_IMM_DATA, d);
                }
                Imm::Verdict(code, chain) => {
                    e.u32(NFTNL_EXPR_IMM_VERDICT, *code as u32);
                    if let Some(c) = chain {
                        e.str(NFTNL_EXPR_IMM_CHAIN, c);
                    }
                }
            }
        }
        Vm::Counter => e = NlExpr::new("counter"),
        Vm::Log { prefix, group } => {
            e = NlExpr::new("log");
            if let Some(p) = prefix {
                e.str(NFTNL_EXPR_LOG_PREFIX, p);
            }
            if let Some(g) = group {
                e.set(NFTNL_EXPR_LOG_GROUP, &g.to_ne_bytes());
            }
        }
        Vm::Nat {
            kind,
            family,
            reg_addr,
            reg_proto,
            flags,
        } => {
            e = NlExpr::new("nat");
            e.u32(NFTNL_EXPR_NAT_TYPE, *kind)
                .u32(NFTNL_EXPR_NAT_FAMILY, *family);
            if let Some(r) = reg_addr {
                e.u32(NFTNL_EXPR_NAT_REG_ADDR_MIN, *r);
            }
            if let Some(r) = reg_proto {
                e.u32(NFTNL_EXPR_NAT_REG_PROTO_MIN, *r);
            }
            if *flags != 0 {
                e.u32(NFTNL_EXPR_NAT_FLAGS, *flags);
            }
        }
        Vm::Masq { flags } => {
            e = NlExpr::new("masq");
            if *flags != 0 {
                e.u32(NFTNL_EXPR_MASQ_FLAGS, *flags);
            }
        }
        Vm::Reject { kind, code } => {
            e = NlExpr::new("reject");
            e.u32(NFTNL_EXPR_REJECT_TYPE, *kind);
            if *kind != super::consts::NFT_REJECT_TCP_RST {
                e.set(NFTNL_EXPR_REJECT_CODE, &[*code]);
            }
        }
        Vm::Dynset {
            sreg_key,
            sreg_data,
            op,
            set,
            timeout_ms,
        } => {
            e = NlExpr::new("dynset");
            e.u32(NFTNL_EXPR_DYNSET_SREG_KEY, *sreg_key)
                .u32(NFTNL_EXPR_DYNSET_OP, *op)
                .str(NFTNL_EXPR_DYNSET_SET_NAME, set);
            if let Some(d) = sreg_data {
                e.u32(NFTNL_EXPR_DYNSET_SREG_DATA, *d);
            }
            if let Some(t) = timeout_ms {
                e.set(NFTNL_EXPR_DYNSET_TIMEOUT, &t.to_ne_bytes());
            }
        }
        Vm::Unknown(name) => e = NlExpr::new(name),
    }
    e
}

fn vm_of(e: ExprRef<'_>) -> Vm {
    use sys::*;
    let name = e.name();
    match name.as_str() {
        "payload" if e.u32(NFTNL_EXPR_PAYLOAD_SREG).is_none() => Vm::Payload {
            dreg: e.u32_or0(NFTNL_EXPR_PAYLOAD_DREG),
            base: e.u32_or0(NFTNL_EXPR_PAYLOAD_BASE),
            offset: e.u32_or0(NFTNL_EXPR_PAYLOAD_OFFSET),
            len: e.u32_or0(NFTNL_EXPR_PAYLOAD_LEN),
        },
        "meta" => match (e.u32(NFTNL_EXPR_META_DREG), e.u32(NFTNL_EXPR_META_SREG)) {
            (Some(dreg), None) => Vm::Meta {
                key: e.u32_or0(NFTNL_EXPR_META_KEY),
                dreg,
            },
            (None, Some(sreg)) => Vm::MetaSet {
                key: e.u32_or0(NFTNL_EXPR_META_KEY),
                sreg,
            },
            _ => Vm::Unknown(name),
        },
        "ct" if e.u32(NFTNL_EXPR_CT_DREG).is_some() => Vm::Ct {
            key: e.u32_or0(NFTNL_EXPR_CT_KEY),
            dreg: e.u32_or0(NFTNL_EXPR_CT_DREG),
            // One byte (see `expr_of`).
            dir: e.get(NFTNL_EXPR_CT_DIR).and_then(|b| b.first().copied()),
        },
        "ct" if e.get(NFTNL_EXPR_CT_DIR).is_none()
            && e.u32(NFTNL_EXPR_CT_DREG).is_none()
            && e.u32(NFTNL_EXPR_CT_SREG).is_some() =>
        {
            Vm::CtSet {
                key: e.u32_or0(NFTNL_EXPR_CT_KEY),
                sreg: e.u32_or0(NFTNL_EXPR_CT_SREG),
            }
        }
        "fib" => Vm::Fib {
            flags: e.u32_or0(NFTNL_EXPR_FIB_FLAGS),
            result: e.u32_or0(NFTNL_EXPR_FIB_RESULT),
            dreg: e.u32_or0(NFTNL_EXPR_FIB_DREG),
        },
        "cmp" => Vm::Cmp {
            sreg: e.u32_or0(NFTNL_EXPR_CMP_SREG),
            op: e.u32_or0(NFTNL_EXPR_CMP_OP),
            data: e.data(NFTNL_EXPR_CMP_DATA),
        },
        "range" => Vm::Range {
            sreg: e.u32_or0(NFTNL_EXPR_RANGE_SREG),
            op: e.u32_or0(NFTNL_EXPR_RANGE_OP),
            from: e.data(NFTNL_EXPR_RANGE_FROM_DATA),
            to: e.data(NFTNL_EXPR_RANGE_TO_DATA),
        },
        "bitwise" if e.u32_or0(NFTNL_EXPR_BITWISE_OP) == 0 => Vm::Bitwise {
            sreg: e.u32_or0(NFTNL_EXPR_BITWISE_SREG),
            dreg: e.u32_or0(NFTNL_EXPR_BITWISE_DREG),
            len: e.u32_or0(NFTNL_EXPR_BITWISE_LEN),
            mask: e.data(NFTNL_EXPR_BITWISE_MASK),
            xor: e.data(NFTNL_EXPR_BITWISE_XOR),
        },
        "byteorder" => Vm::Byteorder {
            sreg: e.u32_or0(NFTNL_EXPR_BYTEORDER_SREG),
            dreg: e.u32_or0(NFTNL_EXPR_BYTEORDER_DREG),
            op: e.u32_or0(NFTNL_EXPR_BYTEORDER_OP),
            len: e.u32_or0(NFTNL_EXPR_BYTEORDER_LEN),
            size: e.u32_or0(NFTNL_EXPR_BYTEORDER_SIZE),
        },
        "lookup" => Vm::Lookup {
            sreg: e.u32_or0(NFTNL_EXPR_LOOKUP_SREG),
            dreg: e.u32(NFTNL_EXPR_LOOKUP_DREG),
            set: e.str(NFTNL_EXPR_LOOKUP_SET).unwrap_or_default(),
            inv: e.u32_or0(NFTNL_EXPR_LOOKUP_FLAGS) & super::consts::NFT_LOOKUP_F_INV != 0,
        },
        "numgen" => Vm::Numgen {
            dreg: e.u32_or0(NFTNL_EXPR_NG_DREG),
            modulus: e.u32_or0(NFTNL_EXPR_NG_MODULUS),
            kind: e.u32_or0(NFTNL_EXPR_NG_TYPE),
            offset: e.u32_or0(NFTNL_EXPR_NG_OFFSET),
        },
        "immediate" => {
            let dreg = e.u32_or0(NFTNL_EXPR_IMM_DREG);
            let data = match e.u32(NFTNL_EXPR_IMM_VERDICT) {
                Some(code) => Imm::Verdict(code as i32, e.str(NFTNL_EXPR_IMM_CHAIN)),
                None => Imm::Data(e.data(NFTNL_EXPR_IMM_DATA)),
            };
            Vm::Immediate { dreg, data }
        }
        "counter" => Vm::Counter,
        "log" => Vm::Log {
            prefix: e.str(NFTNL_EXPR_LOG_PREFIX),
            group: e
                .get(NFTNL_EXPR_LOG_GROUP)
                .and_then(|b| Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))),
        },
        "nat" => Vm::Nat {
            kind: e.u32_or0(NFTNL_EXPR_NAT_TYPE),
            family: e.u32_or0(NFTNL_EXPR_NAT_FAMILY),
            reg_addr: e.u32(NFTNL_EXPR_NAT_REG_ADDR_MIN),
            reg_proto: e.u32(NFTNL_EXPR_NAT_REG_PROTO_MIN),
            flags: e.u32_or0(NFTNL_EXPR_NAT_FLAGS),
        },
        "masq" => Vm::Masq {
            flags: e.u32_or0(NFTNL_EXPR_MASQ_FLAGS),
        },
        "reject" => Vm::Reject {
            kind: e.u32_or0(NFTNL_EXPR_REJECT_TYPE),
            code: e
                .get(NFTNL_EXPR_REJECT_CODE)
                .and_then(|b| b.first().copied())
                .unwrap_or(0),
        },
        "dynset" => Vm::Dynset {
            sreg_key: e.u32_or0(NFTNL_EXPR_DYNSET_SREG_KEY),
            sreg_data: e.u32(NFTNL_EXPR_DYNSET_SREG_DATA),
            op: e.u32_or0(NFTNL_EXPR_DYNSET_OP),
            set: e.str(NFTNL_EXPR_DYNSET_SET_NAME).unwrap_or_default(),
            timeout_ms: e.get(NFTNL_EXPR_DYNSET_TIMEOUT).and_then(u64_of),
        },
        _ => Vm::Unknown(name),
    }
}

/// Appends netlink messages to one contiguous buffer (the whole batch, sent with
/// one `sendmsg`). libnftnl writes each message into an aligned scratch page first;
/// callers keep messages well below its size (see `MAX_MSG`).
pub(crate) struct MsgWriter {
    scratch: Vec<u64>,
    pub out: Vec<u8>,
}

/// Scratch size. Messages are bounded far below it: names ≤ 255 bytes, comments
/// ≤ 128, rules ≤ `encode::MAX_RULE_BYTES`, element chunks ≤ `encode::MAX_ELEM_BYTES`.
pub(crate) const MAX_MSG: usize = 256 * 1024;

pub(crate) enum Payload<'a> {
    Table(&'a NlTable),
    Chain(&'a NlChain),
    Rule(&'a NlRule),
    Set(&'a NlSet),
    Elems(&'a NlSet),
    Gen,
}

impl MsgWriter {
    pub fn new() -> Self {
        MsgWriter {
            scratch: vec![0u64; MAX_MSG / 8],
            out: Vec::new(),
        }
    }

    /// Append one nf_tables message.
    pub fn push(&mut self, ty: u16, family: u8, flags: u16, seq: u32, payload: Payload<'_>) {
        let buf = self.scratch.as_mut_ptr().cast::<std::ffi::c_char>();
        // SAFETY: `buf` is 8-byte aligned and MAX_MSG bytes long; every message we
        // build is bounded well below that (see MAX_MSG). The objects are live.
        let len = unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(buf, ty, u16::from(family), flags, seq);
            match payload {
                Payload::Table(t) => sys::nftnl_table_nlmsg_build_payload(nlh, t.as_ptr()),
                Payload::Chain(c) => sys::nftnl_chain_nlmsg_build_payload(nlh, c.as_ptr()),
                Payload::Rule(r) => sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr()),
                Payload::Set(s) => sys::nftnl_set_nlmsg_build_payload(nlh, s.as_ptr()),
                Payload::Elems(s) => sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.as_ptr()),
                Payload::Gen => {}
            }
            (*nlh).nlmsg_len as usize
        };
        assert!(len <= MAX_MSG, "netlink message overran its buffer");
        // SAFETY: the first `len` bytes of scratch were just written.
        let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        self.out.extend_from_slice(bytes);
    }
}

/// Which libnftnl parser to run on a received message.
macro_rules! parser {
    ($fn:ident, $ty:ident, $parse:ident) => {
        /// Parse a received message (whose header was bounds-checked by the caller).
        pub(crate) fn $fn(msg: &AlignedMsg<'_>) -> Option<$ty> {
            let obj = $ty::new();
            // SAFETY: `msg` is a complete, 4-byte aligned netlink message whose
            // nlmsg_len equals its length; libnftnl parses within nlmsg_len.
            let rc = unsafe { sys::$parse(msg.0.as_ptr().cast(), obj.as_ptr()) };
            (rc >= 0).then_some(obj)
        }
    };
}

parser!(parse_table, NlTable, nftnl_table_nlmsg_parse);
parser!(parse_chain, NlChain, nftnl_chain_nlmsg_parse);
parser!(parse_rule, NlRule, nftnl_rule_nlmsg_parse);
parser!(parse_set, NlSet, nftnl_set_nlmsg_parse);
parser!(parse_elems, NlSet, nftnl_set_elems_nlmsg_parse);
parser!(parse_gen, NlGen, nftnl_gen_nlmsg_parse);

/// A received netlink message known to be complete and 4-byte aligned.
pub(crate) struct AlignedMsg<'a>(&'a [u8]);

impl<'a> AlignedMsg<'a> {
    /// `None` unless `b` is 4-byte aligned and holds exactly the message its header
    /// announces.
    pub fn new(b: &'a [u8]) -> Option<Self> {
        let ok = b.as_ptr().align_offset(4) == 0
            && b.len() >= 16
            && u32::from_ne_bytes(b[..4].try_into().ok()?) as usize == b.len();
        ok.then_some(AlignedMsg(b))
    }
}
