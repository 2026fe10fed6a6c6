//! DNS name patterns of `DnsPolicy` (`allow`, `deny`), as Cilium's `matchPattern` writes them,
//! with `**` for any depth.
//!
//! - `api.example.com`: that name only. Case is ignored; a trailing dot is ignored on both sides.
//! - `*` inside a label matches any run of characters but the dot: `*.example.com` matches
//!   `a.example.com`, not `a.b.example.com` nor `example.com`; `api-*.example.com` matches
//!   `api-v2.example.com`.
//! - `**` as the whole leftmost label matches one or more labels: `**.example.com` matches
//!   `a.example.com` and `a.b.example.com`, never the apex; `**` alone matches every name.
//!
//! The C modules of `wasm-policies/` implement the same rules; both are checked against
//! `wasm-policies/testdata/patterns.tsv`.

/// Why `pattern` is not a pattern, or `None`.
pub fn check_pattern(pattern: &str) -> Option<String> {
    let p = pattern.strip_suffix('.').unwrap_or(pattern);
    if p.is_empty() {
        return Some("empty pattern".into());
    }
    if p.len() > 253 {
        return Some("longer than 253 characters".into());
    }
    for (i, label) in p.split('.').enumerate() {
        if label.is_empty() {
            return Some("empty label".into());
        }
        if label.len() > 63 {
            return Some(format!("label of {} characters (at most 63)", label.len()));
        }
        if label.contains("**") && (label != "**" || i != 0) {
            return Some("\"**\" must be the whole leftmost label".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')))
        {
            return Some(format!(
                "character {c:?} (allowed: letters, digits, '-', '_', '*')"
            ));
        }
    }
    None
}

/// `*` within one label, case-insensitive.
fn label_matches(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| label_matches(rest, &s[i..])),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, srest)| c.eq_ignore_ascii_case(d) && label_matches(rest, srest)),
    }
}

/// Whether `name` matches `pattern` (a pattern [`check_pattern`] accepts).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.strip_suffix('.').unwrap_or(pattern);
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() {
        return false;
    }
    // Label by label from the right, without allocating.
    let (any_depth, p) = match p.strip_prefix("**") {
        Some("") => return true,
        Some(rest) => (true, rest.strip_prefix('.').unwrap_or(rest)),
        None => (false, p),
    };
    let mut pl = p.rsplit('.');
    let mut nl = n.rsplit('.');
    loop {
        match (pl.next(), nl.next()) {
            (Some(p), Some(s)) if label_matches(p.as_bytes(), s.as_bytes()) => {}
            (Some(_), _) => return false,
            // the pattern is used up: the name must be too, or have more labels for "**"
            (None, rest) => return rest.is_some() == any_depth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(file: &str) -> Vec<Vec<String>> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../wasm-policies/testdata")
            .join(file);
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn the_pattern_table_holds() {
        let rows = table("patterns.tsv");
        assert!(rows.len() > 30);
        for r in rows {
            assert_eq!(check_pattern(&r[0]), None, "{:?}", r[0]);
            assert_eq!(
                pattern_matches(&r[0], &r[1]),
                r[2] == "yes",
                "{:?} {:?}",
                r[0],
                r[1]
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for r in table("bad-patterns.tsv") {
            assert!(
                check_pattern(&r[0]).is_some(),
                "{:?} ({}) accepted",
                r[0],
                r[1]
            );
        }
    }
}
