//! The statuses netlet answers with: a message naming the field at fault, and the structured
//! details (`BadRequest`, `ErrorInfo`) clients act on.

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of netlet's errors.
pub const ERROR_DOMAIN: &str = "netlet.io";

/// The `ErrorInfo.reason` of an `INVALID_ARGUMENT` naming a field.
pub const REASON_INVALID_FIELD: &str = "INVALID_FIELD";

/// A status about one request field, readable and structured: the message `"<field>: <why>"`,
/// and in the details a `google.rpc.BadRequest` with that field violation and a
/// `google.rpc.ErrorInfo` with `reason` (SCREAMING_SNAKE_CASE) in [`ERROR_DOMAIN`], so clients
/// act on the reason and the field, never on the text.
pub fn field_error(
    code: tonic::Code,
    field: impl std::fmt::Display,
    why: impl std::fmt::Display,
    reason: &str,
) -> Status {
    let (field, why) = (field.to_string(), why.to_string());
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field.clone(), why.clone());
    details.set_error_info(
        reason,
        ERROR_DOMAIN,
        std::collections::HashMap::from([("field".to_string(), field.clone())]),
    );
    Status::with_error_details(code, format!("{field}: {why}"), details)
}

/// A status not about a field, with an `ErrorInfo` `reason` in [`ERROR_DOMAIN`].
pub fn reason_error(code: tonic::Code, message: impl Into<String>, reason: &str) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    Status::with_error_details(code, message, details)
}

/// `INVALID_ARGUMENT` with the message `"<field>: <why>"`, the field in a `BadRequest` and the
/// reason [`REASON_INVALID_FIELD`].
pub fn invalid(field: impl std::fmt::Display, why: impl std::fmt::Display) -> Status {
    field_error(
        tonic::Code::InvalidArgument,
        field,
        why,
        REASON_INVALID_FIELD,
    )
}

/// The `ErrorInfo.reason` a status carries, if any.
pub fn error_reason(s: &Status) -> Option<String> {
    s.get_details_error_info().map(|i| i.reason)
}

/// The first field a status's `BadRequest` names, if any.
pub fn error_field(s: &Status) -> Option<String> {
    s.get_details_bad_request()
        .and_then(|b| b.field_violations.into_iter().next())
        .map(|v| v.field)
}
