//! Kubernetes' rules for names: DNS labels and subdomains, label keys and values.

use tonic::Status;

use crate::status::invalid;

type R = Result<(), Status>;

/// A DNS-1123 label: 1..63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn dns_label(field: &str, v: &str) -> R {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a DNS-1123 label (1-63 of a-z, 0-9, '-')"),
        ))
    }
}

/// A DNS-1123 subdomain: 1..253 of `[a-z0-9-.]`, alphanumeric at both ends (pod names).
pub fn dns_subdomain(field: &str, v: &str) -> R {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a DNS-1123 subdomain (1-253 of a-z, 0-9, '-', '.')"),
        ))
    }
}

/// A Kubernetes label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name
/// 1..63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn metadata_key(field: &str, k: &str) -> R {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(field, p)
            .map_err(|_| invalid(field, format!("{k:?}: the prefix is not a DNS subdomain")))?;
    }
    if is_label_value(name) && !name.is_empty() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{k:?} is not a label key (1-63 of A-Z, a-z, 0-9, '-', '_', '.', after an optional prefix/)"
            ),
        ))
    }
}

/// A label value: 0..63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
/// Whether `v` is a label value (at most 63 characters: alphanumerics, `-`, `_`, `.`, an
/// alphanumeric at both ends; empty is one).
pub fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}
