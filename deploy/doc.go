// Package deploy holds no code: it is the home of the container image
// (Dockerfile) and the Kubernetes manifests (kubernetes/), and of the tests
// that check them without a Docker daemon or a cluster: the manifests
// decode strictly into the Kubernetes API types and agree with each other,
// with the Dockerfile and with pico-edge's flags; kubectl (when installed)
// builds them with kustomize and applies them in client dry-run against a
// stand-in API discovery server on loopback; the Dockerfile's build
// command builds static binaries from the context it leaves; the pod's
// arguments start a real node that drains within the pod's grace period.
//
// It is a module of its own (github.com/pico-edge/pico/deploy, go.mod
// here) so that the Kubernetes API types its tests decode into stay out of
// the module graph of github.com/pico-edge/pico, and so of every program
// that requires the agent SDK; the root's TestModuleGraph checks that.
// Nothing imports this package. Run its tests with the rest (bash .ci/test
// from the root) or here with go test ./...
package deploy
