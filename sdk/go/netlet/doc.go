// Package netlet is the Go SDK for netlet network drivers.
//
// A driver implements the generated server interfaces of the capabilities it serves
// (netletv1alpha1.PodsServer, NodeServer, ServicesServer, PolicyServer, DevicesServer; embed the
// Unimplemented* structs so what is not served answers UNIMPLEMENTED) and calls Serve. Serve
// binds the unix socket (removing a stale one), serves Identity from what the Driver declares,
// grpc.health.v1, server reflection, and stops gracefully on SIGTERM or SIGINT, removing the
// socket.
//
// The contract is proto/netlet/v1alpha1 in the netlet repository; its comments say, per RPC,
// what a driver must do, its idempotency and its error codes. FieldError and the validators
// here give the errors it asks for (the field at fault in a google.rpc.BadRequest and a reason
// in a google.rpc.ErrorInfo), and Applied implements the generation rules of ProgramService and
// ApplyPolicy.
package netlet
