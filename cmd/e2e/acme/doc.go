// Package acmetest runs pico-edge's ACME client (docs/certificates.md)
// against a real ACME CA, Pebble, built from its module and started on
// loopback, with real TLS-ALPN-01 and HTTP-01 validation: Pebble resolves
// every name to 127.0.0.1 through a DNS server the test runs, and its
// validation ports are the edge's front doors. It is a module of its own so
// that Pebble's dependencies stay out of the root module's graph.
package acmetest
