//! Mapping of the host's errors to gRPC status codes, in one place.

use std::error::Error as _;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::registry::DriverEntry;

/// A driver call failed: keep its code (a transport failure becomes `UNAVAILABLE`, a timeout
/// `DEADLINE_EXCEEDED`) and its details, and say which driver and network.
pub fn from_driver(driver: &DriverEntry, network: Option<&str>, s: Status) -> Status {
    from_driver_at(driver, network, None, s)
}

/// As [`from_driver`], for a call that carried the caller's `networks[index]` alone as the
/// driver's `networks[0]`: a field the driver names there is renamed to the caller's, and the
/// message still starts with the field (`networks[1].ips[0]: ... (network "net1", driver
/// "bridge")`), as the contract asks of every field error.
pub fn from_driver_at(
    driver: &DriverEntry,
    network: Option<&str>,
    index: Option<usize>,
    s: Status,
) -> Status {
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
    let rename = |f: &str| match (index, f.strip_prefix("networks[0]")) {
        (Some(i), Some(rest)) => format!("networks[{i}]{rest}"),
        _ => f.to_string(),
    };
    let details = s.get_error_details();
    if let Some(field) = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .map(|v| v.field.clone())
    {
        // The driver's "<field>: <why>" becomes "<caller's field>: <why> (<place>)".
        let why = s
            .message()
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(s.message())
            .to_string();
        let renamed = rename(&field);
        let mut out = ErrorDetails::new();
        if let Some(b) = details.bad_request() {
            let mut violations = b.field_violations.clone();
            for v in &mut violations {
                v.field = rename(&v.field);
            }
            out.set_bad_request(violations);
        }
        if let Some(info) = details.error_info().cloned() {
            let mut metadata = info.metadata;
            metadata.insert("field".into(), renamed.clone());
            metadata.insert("driver".into(), driver.name.clone());
            out.set_error_info(info.reason, info.domain, metadata);
        }
        return Status::with_error_details(code, format!("{renamed}: {why} ({place})"), out);
    }
    // The details (a reason) travel on unchanged.
    Status::with_details(
        code,
        format!("{place}: {}", s.message()),
        s.details().to_vec().into(),
    )
}

/// A driver refused or failed the host's own batch (a delta or full sync of the node's table):
/// the caller's request is not at fault, so no field of it is named; the driver's reason and
/// message are kept, behind the driver's name.
pub fn from_fanout(driver: &DriverEntry, s: Status) -> Status {
    let s = from_driver(driver, None, s);
    let mut details = ErrorDetails::new();
    if let Some(info) = s.get_details_error_info() {
        let mut metadata = info.metadata;
        metadata.remove("field");
        metadata.insert("driver".into(), driver.name.clone());
        details.set_error_info(info.reason, info.domain, metadata);
    }
    let message = match s
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().cloned())
    {
        Some(v) => format!(
            "driver {:?} refused the host's batch: {}: {}",
            driver.name, v.field, v.description
        ),
        None => s.message().to_string(),
    };
    Status::with_error_details(s.code(), message, details)
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
