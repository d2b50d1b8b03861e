//! Kernel VM expressions as plain data: what a rule looks like on the wire.
//!
//! The encoder turns model statements into `Vm`s (pure, unit-tested), `sys` turns
//! `Vm`s into libnftnl expressions and back, and the decoder turns `Vm`s read from
//! the kernel back into statements. Only the attributes kube-nft uses are kept.

/// Data an `immediate` expression puts into a register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Imm {
    Data(Vec<u8>),
    /// Verdict code and, for jump/goto, the chain.
    Verdict(i32, Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vm {
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Meta {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
        /// `Some(IP_CT_DIR_ORIGINAL)` for `ct original …` keys.
        dir: Option<u8>,
    },
    CtSet {
        key: u32,
        sreg: u32,
    },
    Fib {
        flags: u32,
        result: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    Lookup {
        sreg: u32,
        dreg: Option<u32>,
        set: String,
        inv: bool,
    },
    Numgen {
        dreg: u32,
        modulus: u32,
        kind: u32,
        offset: u32,
    },
    Immediate {
        dreg: u32,
        data: Imm,
    },
    Counter,
    Log {
        prefix: Option<String>,
        group: Option<u16>,
    },
    Nat {
        kind: u32,
        family: u32,
        reg_addr: Option<u32>,
        reg_proto: Option<u32>,
        flags: u32,
    },
    Masq {
        flags: u32,
    },
    Reject {
        kind: u32,
        code: u8,
    },
    Dynset {
        sreg_key: u32,
        /// Map updates: the register the element's data starts in.
        sreg_data: Option<u32>,
        op: u32,
        set: String,
        timeout_ms: Option<u64>,
    },
    /// An expression kube-nft does not produce (decoding fails on it).
    Unknown(String),
}

/// Byte offset of a register in the register file (16-byte registers 1..4 alias the
/// 4-byte registers 8..23), so loads and reads of both numberings line up.
pub(crate) fn reg_offset(reg: u32) -> u32 {
    if (1..=4).contains(&reg) {
        (reg - 1) * 16
    } else {
        reg.saturating_sub(8) * 4
    }
}
