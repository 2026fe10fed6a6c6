//! The one hash of the project: FNV-1a, 64 bits. Stable across builds and machines (unlike
//! `std`'s hasher), so names derived from ids (a pod's veth, a Service chain's id) come out the
//! same after a restart or an upgrade. Not for anything an attacker must not steer.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

fn feed(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    feed(OFFSET, bytes.iter().copied())
}

/// FNV-1a of several strings, each followed by a NUL (so `["ab", "c"]` and `["a", "bc"]`
/// differ).
pub fn fnv1a_parts(parts: &[&str]) -> u64 {
    parts
        .iter()
        .fold(OFFSET, |h, p| feed(h, p.bytes().chain([0u8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values of FNV-1a 64 (the published test vectors of Fowler, Noll and Vo).
    #[test]
    fn matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_parts(&["a"]), fnv1a(b"a\0"));
        assert_ne!(fnv1a_parts(&["ab", "c"]), fnv1a_parts(&["a", "bc"]));
    }
}
