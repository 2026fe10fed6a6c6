//! The conformance checks, one file per capability.

mod cluster;
mod dataplane;
mod devices;
mod identity;
mod node;
pub(crate) mod pods;
mod policy;
mod services;

use std::fmt::Debug;

use tonic::Code;

use crate::conformance::Check;

/// Every check, in run order.
pub fn all() -> Vec<Check> {
    let mut v = identity::checks();
    v.extend(node::checks());
    v.extend(pods::checks());
    v.extend(dataplane::checks());
    v.extend(services::checks());
    v.extend(policy::checks());
    v.extend(devices::checks());
    v.extend(cluster::checks());
    v
}

/// Declares a check whose body is an async block over `ctx`.
macro_rules! check {
    ($name:literal, $needs:expr, |$ctx:ident| $body:block) => {
        $crate::conformance::Check {
            name: $name,
            needs: $needs,
            only: None,
            run: |$ctx| Box::pin(async move { $body }),
        }
    };
    ($name:literal, $needs:expr, only $mode:expr, |$ctx:ident| $body:block) => {
        $crate::conformance::Check {
            name: $name,
            needs: $needs,
            only: Some($mode),
            run: |$ctx| Box::pin(async move { $body }),
        }
    };
}
pub(crate) use check;

/// Expects a call to fail with `code`; when `field` is given, the status must name it the way
/// the contract says every field error does: the message starts with it, the details carry a
/// `google.rpc.BadRequest` whose first violation is that field and a `google.rpc.ErrorInfo`
/// with a reason. A failure is one line: what was sent, what was expected, what came, the rule.
pub(crate) fn expect_code<T: Debug>(
    what: &str,
    res: Result<T, tonic::Status>,
    code: Code,
    field: Option<&str>,
) -> Result<(), String> {
    let s = match res {
        Ok(v) => {
            return Err(format!(
                "sent {what}: expected {code:?}, got OK: {v:?} (contract: the RPC's error table)"
            ));
        }
        Err(s) => s,
    };
    if s.code() != code {
        return Err(format!(
            "sent {what}: expected {code:?}, got {:?}: {} (contract: the RPC's error table)",
            s.code(),
            s.message()
        ));
    }
    let Some(f) = field else { return Ok(()) };
    if !s.message().starts_with(f) {
        return Err(format!(
            "sent {what}: expected {code:?} naming {f:?} first, got {:?} (contract: an error names the field at fault)",
            s.message()
        ));
    }
    let violation = netlet_sdk::validate::error_field(&s);
    if violation.as_deref() != Some(f) {
        return Err(format!(
            "sent {what}: expected a google.rpc.BadRequest naming {f:?} in the status details, got {violation:?} (contract: structured errors, types.proto)"
        ));
    }
    if netlet_sdk::validate::error_reason(&s).is_none_or(|r| r.is_empty()) {
        return Err(format!(
            "sent {what}: expected a google.rpc.ErrorInfo with a reason in the status details, got none (contract: structured errors, types.proto)"
        ));
    }
    Ok(())
}

/// A failure as one line: what was sent, what was expected, what came, and the contract rule.
pub(crate) fn violation(
    sent: impl std::fmt::Display,
    expected: impl std::fmt::Display,
    got: impl std::fmt::Display,
    rule: &str,
) -> String {
    format!("sent {sent}: expected {expected}, got {got} (contract: {rule})")
}

/// Expects OK.
pub(crate) fn expect_ok<T>(what: &str, res: Result<T, tonic::Status>) -> Result<T, String> {
    res.map_err(|s| {
        format!(
            "sent {what}: expected OK, got {:?}: {}",
            s.code(),
            s.message()
        )
    })
}
