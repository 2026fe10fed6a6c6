//! The conformance checks, one file per capability.

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
    v
}

/// Declares a check whose body is an async block over `ctx`.
macro_rules! check {
    ($name:literal, $needs:expr, |$ctx:ident| $body:block) => {
        $crate::conformance::Check {
            name: $name,
            needs: $needs,
            run: |$ctx| Box::pin(async move { $body }),
        }
    };
}
pub(crate) use check;

/// Expects a call to fail with `code` and a message starting with `field` (when given).
pub(crate) fn expect_code<T: Debug>(
    what: &str,
    res: Result<T, tonic::Status>,
    code: Code,
    field: Option<&str>,
) -> Result<(), String> {
    match res {
        Ok(v) => Err(format!("{what}: expected {code:?}, got OK: {v:?}")),
        Err(s) if s.code() != code => Err(format!(
            "{what}: expected {code:?}, got {:?}: {}",
            s.code(),
            s.message()
        )),
        Err(s) => match field {
            Some(f) if !s.message().starts_with(f) => Err(format!(
                "{what}: {code:?} message should name field {f:?} first, got {:?}",
                s.message()
            )),
            _ => Ok(()),
        },
    }
}

/// Expects OK.
pub(crate) fn expect_ok<T>(what: &str, res: Result<T, tonic::Status>) -> Result<T, String> {
    res.map_err(|s| format!("{what}: expected OK, got {:?}: {}", s.code(), s.message()))
}
