// Package grpctest holds the gRPC tests: grpc-go clients (over TLS and
// h2c) and connect-go clients (over HTTP/3) call a grpc-go server through
// an in-process edge node and agent (edge/edgetest).
//
// It is a module of its own (go.mod here, with a replace of the root
// module to ../../..) so that grpc-go and connect-go stay out of the module
// graph of github.com/pico-edge/pico: whoever requires the agent SDK does
// not get them. The root's TestModuleGraph checks that. Run the tests with
// the rest (bash .ci/test from the root) or here:
//
//	go test -race -count=1 ./...
//
// The package has no code outside tests.
package grpctest
