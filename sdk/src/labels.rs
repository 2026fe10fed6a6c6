//! Kubernetes label selectors: checked with the API server's rules and matched as
//! `metav1.LabelSelectorAsSelector` does — `match_labels` are equality requirements,
//! `match_expressions` set-based ones, all of them ANDed; a selector with neither matches every
//! object (as in a NetworkPolicy's `podSelector: {}`).

use std::collections::HashMap;

use tonic::Status;

use crate::names::{is_label_value, metadata_key};
use crate::proto::{LabelSelector, LabelSelectorRequirement};
use crate::status::invalid;

/// A label value at `field` (see [`is_label_value`]).
pub fn label_value(field: &str, v: &str) -> Result<(), Status> {
    if is_label_value(v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{v:?} is not a label value (63 characters at most: alphanumerics, '-', '_', '.', alphanumeric at both ends)"
            ),
        ))
    }
}

/// Checks a selector at `field`: keys are qualified names, values label values; `In` and
/// `NotIn` need values, `Exists` and `DoesNotExist` take none.
pub fn selector(field: &str, s: &LabelSelector) -> Result<(), Status> {
    for (k, v) in &s.match_labels {
        metadata_key(&format!("{field}.match_labels"), k)?;
        label_value(&format!("{field}.match_labels[{k}]"), v)?;
    }
    for (i, r) in s.match_expressions.iter().enumerate() {
        let f = format!("{field}.match_expressions[{i}]");
        metadata_key(&format!("{f}.key"), &r.key)?;
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => {
                return Err(invalid(
                    format!("{f}.values"),
                    format!("required for operator {}", r.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                return Err(invalid(
                    format!("{f}.values"),
                    format!("must be empty for operator {}", r.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(invalid(
                    format!("{f}.operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
        for (j, v) in r.values.iter().enumerate() {
            label_value(&format!("{f}.values[{j}]"), v)?;
        }
    }
    Ok(())
}

fn requirement(r: &LabelSelectorRequirement, labels: &HashMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| r.values.contains(v)),
        "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        // Refused by `selector`; an unknown operator matches nothing.
        _ => false,
    }
}

/// Whether `labels` satisfy `s` (every requirement; none: everything matches).
pub fn matches(s: &LabelSelector, labels: &HashMap<String, String>) -> bool {
    s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && s.match_expressions.iter().all(|r| requirement(r, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    // The cases of the Kubernetes documentation's "Labels and Selectors" page.
    #[test]
    fn matching_follows_the_api() {
        let web = labels(&[("app", "web"), ("tier", "frontend"), ("env", "prod")]);
        let bare = labels(&[]);
        let all = LabelSelector::default();
        assert!(
            matches(&all, &web) && matches(&all, &bare),
            "empty matches all"
        );
        let eq = LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        assert!(matches(&eq, &web) && !matches(&eq, &bare));
        let sel = |e: LabelSelectorRequirement| LabelSelector {
            match_expressions: vec![e],
            ..Default::default()
        };
        assert!(matches(&sel(expr("env", "In", &["prod", "qa"])), &web));
        assert!(!matches(&sel(expr("env", "In", &["qa"])), &web));
        assert!(!matches(&sel(expr("env", "In", &["prod"])), &bare));
        // NotIn: also objects without the label.
        assert!(matches(&sel(expr("env", "NotIn", &["qa"])), &web));
        assert!(matches(&sel(expr("env", "NotIn", &["prod"])), &bare));
        assert!(!matches(&sel(expr("env", "NotIn", &["prod"])), &web));
        assert!(matches(&sel(expr("tier", "Exists", &[])), &web));
        assert!(!matches(&sel(expr("tier", "Exists", &[])), &bare));
        assert!(matches(&sel(expr("tier", "DoesNotExist", &[])), &bare));
        // Everything ANDed.
        let both = LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![expr("env", "In", &["qa"])],
        };
        assert!(!matches(&both, &web));
    }

    #[test]
    fn selectors_are_checked_like_the_api_server_does() {
        let bad = |s: LabelSelector| selector("s", &s).unwrap_err().message().to_string();
        let one = |e| LabelSelector {
            match_expressions: vec![e],
            ..Default::default()
        };
        assert!(bad(one(expr("app", "In", &[]))).starts_with("s.match_expressions[0].values:"));
        assert!(
            bad(one(expr("app", "Exists", &["x"]))).starts_with("s.match_expressions[0].values:")
        );
        assert!(
            bad(one(expr("app", "Has", &["x"]))).starts_with("s.match_expressions[0].operator:")
        );
        assert!(
            bad(one(expr("app", "In", &["-x"]))).starts_with("s.match_expressions[0].values[0]:")
        );
        assert!(bad(one(expr("", "Exists", &[]))).starts_with("s.match_expressions[0].key:"));
        let long = "v".repeat(64);
        assert!(
            bad(LabelSelector {
                match_labels: [("app".to_string(), long)].into(),
                ..Default::default()
            })
            .starts_with("s.match_labels[app]:")
        );
        assert!(selector("s", &one(expr("example.com/tier", "NotIn", &["a", "b.c"]))).is_ok());
        assert!(selector("s", &LabelSelector::default()).is_ok());
    }
}
