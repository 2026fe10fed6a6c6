package netlet

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of netlet's errors.
const ErrorDomain = "netlet.io"

// ReasonInvalidField is the ErrorInfo reason of an INVALID_ARGUMENT naming a field.
const ReasonInvalidField = "INVALID_FIELD"

// FieldError is a status about one request field: the message "<field>: <why>", a
// google.rpc.BadRequest naming the field and a google.rpc.ErrorInfo with the reason, as the
// contract asks of every field error (types.proto, "Errors").
func FieldError(code codes.Code, field, why, reason string) error {
	st := status.New(code, fmt.Sprintf("%s: %s", field, why))
	withDetails, err := st.WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: field, Description: why, Reason: reason},
		}},
		&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: map[string]string{"field": field}},
	)
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// Invalid is INVALID_ARGUMENT naming field, with the reason ReasonInvalidField.
func Invalid(field, why string) error {
	return FieldError(codes.InvalidArgument, field, why, ReasonInvalidField)
}

// ReasonError is a status not about a field, with an ErrorInfo reason.
func ReasonError(code codes.Code, message, reason string) error {
	st := status.New(code, message)
	withDetails, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// ErrorField returns the first field a status's BadRequest names, or "".
func ErrorField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}

// ErrorReason returns the ErrorInfo reason a status carries, or "".
func ErrorReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}
