//! Mapping of the host's errors to gRPC status codes, in one place.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::registry::DriverEntry;

/// A driver call failed: keep its code (a transport failure becomes `UNAVAILABLE`, a timeout
/// `DEADLINE_EXCEEDED`) and say which driver and network.
pub fn from_driver(driver: &DriverEntry, network: Option<&str>, s: Status) -> Status {
    let place = match network {
        Some(n) => format!("network {n:?} (driver {:?})", driver.name),
        None => format!("driver {:?}", driver.name),
    };
    let transport =
        s.source().is_some() || s.code() == Code::Unknown && s.message().contains("transport");
    let code = match s.code() {
        Code::Cancelled if s.message().contains("Timeout expired") => Code::DeadlineExceeded,
        Code::Unknown | Code::Cancelled if transport => Code::Unavailable,
        c => c,
    };
    // The details (field violations, reason) travel on unchanged.
    Status::with_details(
        code,
        format!("{place}: {}", s.message()),
        s.details().to_vec().into(),
    )
}

/// No registered driver can serve this.
pub fn nothing_serves(what: &str) -> Status {
    netlet_sdk::validate::reason_error(
        Code::Unavailable,
        format!("no registered driver serves {what}"),
        "NO_DRIVER",
    )
}

/// The embedded database failed.
pub fn from_store(e: crate::store::Error) -> Status {
    tracing::error!(error = %e, "store failure");
    Status::internal(format!("state store: {e}"))
}
