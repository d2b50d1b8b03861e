//! libnftnl "userdata" TLVs (`struct nftnl_udata`: type u8, length u8, value), the
//! opaque blob nft stores on tables, chains, rules, sets and elements for comments
//! and printing hints. Pure Rust: the format is two bytes of header per entry.

#[derive(Default)]
pub(crate) struct Udata(Vec<u8>);

impl Udata {
    pub fn new() -> Self {
        Udata(Vec::new())
    }

    pub fn put(&mut self, ty: u8, value: &[u8]) {
        // Callers bound lengths (comments ≤ 128 bytes); a longer value would not fit
        // the one-byte length and is cut rather than corrupting the buffer.
        let len = value.len().min(255);
        self.0.push(ty);
        self.0.push(len as u8);
        self.0.extend_from_slice(&value[..len]);
    }

    /// A NUL-terminated string, as `nftnl_udata_put_strz` writes it.
    pub fn put_strz(&mut self, ty: u8, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    pub fn put_u32(&mut self, ty: u8, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Iterate the `(type, value)` entries of a userdata blob; stops at a truncated one.
pub(crate) fn parse(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (&ty, tail) = rest.split_first()?;
        let (&len, tail) = tail.split_first()?;
        let value = tail.get(..usize::from(len))?;
        rest = &tail[usize::from(len)..];
        Some((ty, value))
    })
}

/// The string of entry `ty`, without its NUL terminator.
pub(crate) fn get_str(buf: &[u8], ty: u8) -> Option<String> {
    let (_, v) = parse(buf).find(|(t, _)| *t == ty)?;
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    String::from_utf8(v.to_vec()).ok()
}

/// A comment-only blob: the common case for tables, chains, rules and elements.
pub(crate) fn comment(ty: u8, c: &Option<String>) -> Option<Vec<u8>> {
    c.as_ref().map(|c| {
        let mut u = Udata::new();
        u.put_strz(ty, c);
        u.into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut u = Udata::new();
        u.put_u32(0, 2);
        u.put_strz(7, "hello");
        let b = u.into_bytes();
        assert_eq!(b.len(), 2 + 4 + 2 + 6);
        assert_eq!(get_str(&b, 7).as_deref(), Some("hello"));
        assert_eq!(parse(&b).count(), 2);
        assert_eq!(get_str(&b[..7], 7), None);
    }
}
