package deploy

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"go.uber.org/goleak"
)

// TestMain checks for leaked goroutines and removes the binaries that
// binaries built.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if buildDir != "" {
			os.RemoveAll(buildDir)
		}
	}))
}

const (
	manifestDir = "kubernetes"
	namespace   = "pico" // kustomization.yaml's namespace
)

// pico-edge's listeners: flag, port and the protocols on it, and the value
// the manifests must give the flag ("": none, the default). The admin API
// defaults to 127.0.0.1:8002, which kubelet's probes and Prometheus cannot
// reach: the manifests bind it to the pod's interfaces.
var listeners = []struct {
	flag  string
	port  int32
	proto []corev1.Protocol
	set   string
}{
	{"--proxy-addr", 8000, []corev1.Protocol{corev1.ProtocolTCP}, ""},
	{"--proxy-tls-addr", 8443, []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}, ""},
	{"--agent-addr", 8001, []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP}, ""}, // TCP: the TCP transport of agent links
	{"--admin-addr", 8002, []corev1.Protocol{corev1.ProtocolTCP}, ":8002"},
	{"--gossip-addr", 8003, []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}, ""},
}

// ---------------------------------------------------------------------------
// Manifests

// object is one document of a manifest file.
type object struct {
	source string // file (and document number)
	kind   string
	name   string
	ns     string
	doc    []byte // YAML
}

// splitObjects splits multi-document YAML into objects, skipping documents
// that hold only comments.
func splitObjects(t testing.TB, source string, b []byte) []object {
	t.Helper()
	var out []object
	for i, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(b), -1) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s document %d: %v", source, i+1, err)
		}
		if meta.Kind == "" && meta.APIVersion == "" {
			continue
		}
		out = append(out, object{source: fmt.Sprintf("%s#%d", source, i+1), kind: meta.Kind,
			name: meta.Metadata.Name, ns: meta.Metadata.Namespace, doc: []byte(doc)})
	}
	return out
}

// apiVersions are the kinds the manifests may use, with their API group
// version.
var apiVersions = map[string]string{
	"Namespace": "v1", "Service": "v1", "ConfigMap": "v1",
	"StatefulSet": "apps/v1", "Deployment": "apps/v1",
	"PodDisruptionBudget": "policy/v1", "Ingress": "networking.k8s.io/v1",
}

// decode decodes o strictly into its Kubernetes API type: an unknown or
// misplaced field, a duplicate key or a wrong type is an error, as with the
// API server's strict field validation.
func decode(t testing.TB, o object) any {
	t.Helper()
	var v any
	switch o.kind {
	case "Namespace":
		v = &corev1.Namespace{}
	case "Service":
		v = &corev1.Service{}
	case "ConfigMap":
		v = &corev1.ConfigMap{}
	case "StatefulSet":
		v = &appsv1.StatefulSet{}
	case "Deployment":
		v = &appsv1.Deployment{}
	case "PodDisruptionBudget":
		v = &policyv1.PodDisruptionBudget{}
	case "Ingress":
		v = &networkingv1.Ingress{}
	default:
		t.Fatalf("%s: kind %q is not one the tests know", o.source, o.kind)
	}
	if err := yaml.UnmarshalStrict(o.doc, v); err != nil {
		t.Fatalf("%s (%s %s): %v", o.source, o.kind, o.name, err)
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
	}
	yaml.Unmarshal(o.doc, &tm)
	if want := apiVersions[o.kind]; tm.APIVersion != want {
		t.Errorf("%s: %s has apiVersion %q, want %q", o.source, o.kind, tm.APIVersion, want)
	}
	if o.name == "" {
		t.Errorf("%s: %s has no metadata.name", o.source, o.kind)
	}
	return v
}

// kustomization is deploy/kubernetes/kustomization.yaml.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

func readKustomization(t testing.TB) kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(manifestDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// baseObjects reads the files kustomization.yaml lists.
func baseObjects(t testing.TB) []object {
	t.Helper()
	var out []object
	for _, f := range readKustomization(t).Resources {
		b, err := os.ReadFile(filepath.Join(manifestDir, f))
		if err != nil {
			t.Fatalf("kustomization.yaml resource: %v", err)
		}
		out = append(out, splitObjects(t, f, b)...)
	}
	return out
}

// cluster is the decoded base (what `kubectl apply -k` creates) or the
// Helm chart's objects (what `helm install` creates; no Namespace).
type cluster struct {
	ns       *corev1.Namespace
	services map[string]*corev1.Service
	sts      *appsv1.StatefulSet
	pdb      *policyv1.PodDisruptionBudget
}

func decodeCluster(t testing.TB, objs []object) cluster {
	t.Helper()
	c := cluster{services: map[string]*corev1.Service{}}
	for _, o := range objs {
		switch v := decode(t, o).(type) {
		case *corev1.Namespace:
			c.ns = v
		case *corev1.Service:
			c.services[v.Name] = v
		case *appsv1.StatefulSet:
			if c.sts != nil {
				t.Fatalf("two StatefulSets: %s and %s", c.sts.Name, v.Name)
			}
			c.sts = v
		case *policyv1.PodDisruptionBudget:
			c.pdb = v
		default:
			t.Fatalf("%s: a %s in the base", o.source, o.kind)
		}
	}
	if c.sts == nil || c.pdb == nil || len(c.services) == 0 {
		t.Fatalf("no StatefulSet, PodDisruptionBudget or Service among the objects: %+v", c)
	}
	return c
}

// edgeContainer returns the StatefulSet's pico-edge container.
func (c cluster) edgeContainer(t testing.TB) *corev1.Container {
	t.Helper()
	cs := c.sts.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("StatefulSet has %d containers, want 1", len(cs))
	}
	return &cs[0]
}

// flags returns a container's --name=value arguments; "--x" alone maps
// to "".
func flags(t testing.TB, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			t.Fatalf("argument %q: write flags as --name=value", a)
		}
		k, v, _ := strings.Cut(a, "=")
		if _, dup := out[k]; dup {
			t.Errorf("flag %s given twice", k)
		}
		out[k] = v
	}
	return out
}

// containerPort finds the port a probe or Service names (by name or number).
func containerPort(c *corev1.Container, p intstr.IntOrString, proto corev1.Protocol) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		if cp.Protocol == "" {
			cp.Protocol = corev1.ProtocolTCP
		}
		if cp.Protocol != proto {
			continue
		}
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func hasLabels(labels, selector map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// goMemLimit parses a GOMEMLIMIT value (bytes with an optional B, KiB,
// MiB, GiB or TiB suffix).
func goMemLimit(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

// TestManifestsDecode decodes every manifest under deploy/kubernetes
// strictly into the Kubernetes API types, and checks that
// kustomization.yaml lists every manifest of the directory.
func TestManifestsDecode(t *testing.T) {
	k := readKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" || k.Namespace != namespace {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q namespace %q", k.APIVersion, k.Kind, k.Namespace)
	}
	files, _ := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	var listed []string
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" {
			listed = append(listed, base)
		}
	}
	if got := slices.Sorted(slices.Values(k.Resources)); !slices.Equal(got, listed) {
		t.Errorf("kustomization.yaml resources %v, want every manifest of the directory %v", got, listed)
	}
	examples, _ := filepath.Glob(filepath.Join(manifestDir, "examples", "*.yaml"))
	n := 0
	for _, f := range append(files, examples...) {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range splitObjects(t, f, b) {
			decode(t, o)
			n++
		}
	}
	if n < 6 {
		t.Errorf("decoded %d objects, want the namespace, three Services, the StatefulSet, the PDB and the agent", n)
	}
}

// TestManifestCluster checks that the base's objects agree with each
// other and with pico-edge (ports, flags, probes, drain budget, security).
func TestManifestCluster(t *testing.T) {
	c := decodeCluster(t, baseObjects(t))
	if c.ns == nil || c.ns.Name != namespace {
		t.Errorf("the base has no Namespace %s", namespace)
	}
	checkCluster(t, c)
}

// checkCluster checks one edge cluster's objects, the Kustomize base's or
// the Helm chart's: they agree with each other and with pico-edge.
func checkCluster(t *testing.T, c cluster) {
	sts, pod := c.sts, &c.sts.Spec.Template.Spec
	ctr := c.edgeContainer(t)
	f := flags(t, ctr.Args)
	labels := sts.Spec.Template.Labels

	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", sts.Spec.Replicas)
	}
	if sts.Spec.Selector == nil || !hasLabels(labels, sts.Spec.Selector.MatchLabels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", sts.Spec.Selector, labels)
	}
	if c.pdb.Spec.MaxUnavailable == nil || c.pdb.Spec.MaxUnavailable.IntValue() != 1 || c.pdb.Spec.Selector == nil ||
		!hasLabels(labels, c.pdb.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget: maxUnavailable %v, selector %v; want 1 and the edge pods", c.pdb.Spec.MaxUnavailable, c.pdb.Spec.Selector)
	}

	// Container ports: every listener on its default port and protocols,
	// as the flags leave them.
	want := map[string]bool{}
	for _, l := range listeners {
		if v, set := f[l.flag]; l.set == "" && set {
			t.Errorf("%s=%s is set: the tests, the Dockerfile's EXPOSE and the Services assume the default port %d", l.flag, v, l.port)
		} else if l.set != "" && v != l.set {
			t.Errorf("%s=%q, want %s: the default binds it to 127.0.0.1, out of reach of probes and Prometheus", l.flag, v, l.set)
		}
		for _, p := range l.proto {
			want[fmt.Sprintf("%d/%s", l.port, p)] = true
		}
	}
	got := map[string]bool{}
	for _, p := range ctr.Ports {
		if !regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`).MatchString(p.Name) || len(p.Name) > 15 {
			t.Errorf("container port name %q: want a lower-case IANA service name of at most 15 characters", p.Name)
		}
		got[fmt.Sprintf("%d/%s", p.ContainerPort, p.Protocol)] = true
	}
	if !sameKeys(got, want) {
		t.Errorf("container ports %v, want %v", keys(got), keys(want))
	}

	// Identity and gossip: $(VARS) come from the downward API.
	env := map[string]corev1.EnvVar{}
	for _, e := range ctr.Env {
		env[e.Name] = e
	}
	for _, a := range ctr.Args {
		for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(a, -1) {
			if _, ok := env[m[1]]; !ok {
				t.Errorf("argument %q uses $(%s), which no env entry defines (Kubernetes leaves it as is)", a, m[1])
			}
		}
	}
	for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_IP": "status.podIP", "POD_NAMESPACE": "metadata.namespace"} {
		if e, ok := env[name]; !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s: want a fieldRef to %s", name, path)
		}
	}
	if f["--node-id"] != "$(POD_NAME)" || f["--advertise-addr"] != "$(POD_IP)" {
		t.Errorf("--node-id=%s --advertise-addr=%s, want $(POD_NAME) and $(POD_IP)", f["--node-id"], f["--advertise-addr"])
	}
	gossip := c.services[sts.Spec.ServiceName]
	if gossip == nil {
		t.Fatalf("serviceName %q names no Service", sts.Spec.ServiceName)
	}
	if gossip.Spec.ClusterIP != corev1.ClusterIPNone || !gossip.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: clusterIP %q publishNotReadyAddresses %v, want a headless Service that publishes starting pods",
			gossip.Name, gossip.Spec.ClusterIP, gossip.Spec.PublishNotReadyAddresses)
	}
	host, port, err := net.SplitHostPort(f["--join"])
	if err != nil {
		t.Fatalf("--join=%s: %v", f["--join"], err)
	}
	if want := gossip.Name + ".$(POD_NAMESPACE).svc.cluster.local"; host != want {
		t.Errorf("--join host %q, want the headless Service %q", host, want)
	}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		if !slices.ContainsFunc(gossip.Spec.Ports, func(p corev1.ServicePort) bool {
			cp, ok := containerPort(ctr, p.TargetPort, p.Protocol)
			return p.Protocol == proto && fmt.Sprint(p.Port) == port && ok && cp.ContainerPort == 8003
		}) {
			t.Errorf("Service %s has no %s port %s to the gossip port 8003", gossip.Name, proto, port)
		}
	}

	// Services: each selects the edge pods and every port reaches a
	// container port of its protocol; load balancers keep client IPs
	// and QUIC flows on one node, and never expose admin or gossip.
	exposed := map[string]bool{}
	for _, s := range c.services {
		if !hasLabels(labels, s.Spec.Selector) {
			t.Errorf("Service %s selects %v, not the edge pods %v", s.Name, s.Spec.Selector, labels)
		}
		for _, p := range s.Spec.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			cp, ok := containerPort(ctr, p.TargetPort, proto)
			if !ok {
				t.Errorf("Service %s port %s (%d/%s) targets %v: no such %s container port", s.Name, p.Name, p.Port, proto, p.TargetPort.String(), proto)
				continue
			}
			if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				exposed[fmt.Sprintf("%d/%s", cp.ContainerPort, proto)] = true
				if cp.ContainerPort == 8002 || cp.ContainerPort == 8003 {
					t.Errorf("load balancer %s exposes container port %d: keep admin and gossip inside the cluster", s.Name, cp.ContainerPort)
				}
			}
		}
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("load balancer %s: externalTrafficPolicy %q, want Local", s.Name, s.Spec.ExternalTrafficPolicy)
		}
	}
	for _, p := range []string{"8000/TCP", "8443/TCP", "8443/UDP", "8001/UDP", "8001/TCP"} {
		if !exposed[p] {
			t.Errorf("no load balancer exposes container port %s", p)
		}
	}
	// Alt-Svc advertises HTTP/3 on the port pico-edge listens on.
	if !slices.ContainsFunc(slices.Collect(maps.Values(c.services)), func(s *corev1.Service) bool {
		return s.Spec.Type == corev1.ServiceTypeLoadBalancer && slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool {
			cp, ok := containerPort(ctr, p.TargetPort, corev1.ProtocolUDP)
			return p.Protocol == corev1.ProtocolUDP && ok && cp.ContainerPort == 8443 && p.Port == 8443
		})
	}) {
		t.Errorf("no load balancer has UDP port 8443, where Alt-Svc: h3=\":8443\" sends browsers")
	}

	// Probes on the admin port.
	for name, pr := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"readiness": {ctr.ReadinessProbe, "/readyz"}, "liveness": {ctr.LivenessProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("no %s probe with httpGet", name)
			continue
		}
		cp, ok := containerPort(ctr, pr.probe.HTTPGet.Port, corev1.ProtocolTCP)
		if pr.probe.HTTPGet.Path != pr.path || !ok || cp.ContainerPort != 8002 {
			t.Errorf("%s probe GET %s on %s, want %s on the admin port 8002", name, pr.probe.HTTPGet.Path, pr.probe.HTTPGet.Port.String(), pr.path)
		}
	}

	// Drain budget: preStop + --drain-delay + --grace-period + 5 s.
	var preStop time.Duration
	if l := ctr.Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
		preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
	}
	if preStop < 5*time.Second {
		t.Errorf("preStop sleep %s, want 5-10 s so load balancers stop sending first", preStop)
	}
	grace, drain := 30*time.Second, time.Duration(0)
	if v, ok := f["--grace-period"]; ok {
		grace, err = time.ParseDuration(v)
		if err != nil {
			t.Errorf("--grace-period=%s: %v", v, err)
		}
	}
	if v, ok := f["--drain-delay"]; ok {
		drain, _ = time.ParseDuration(v)
	}
	budget := preStop + drain + grace + 5*time.Second
	var termination time.Duration
	if pod.TerminationGracePeriodSeconds != nil {
		termination = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	if termination < budget {
		t.Errorf("terminationGracePeriodSeconds %s, want at least preStop %s + drain delay %s + grace %s + 5s = %s",
			termination, preStop, drain, grace, budget)
	}

	// Resources, and GOMEMLIMIT at about 90 % of the memory limit.
	if ctr.Resources.Requests.Cpu().IsZero() || ctr.Resources.Requests.Memory().IsZero() {
		t.Errorf("resources.requests %v: want cpu and memory", ctr.Resources.Requests)
	}
	limit := ctr.Resources.Limits.Memory().Value()
	if limit == 0 {
		t.Errorf("no memory limit")
	}
	if e, ok := env["GOMEMLIMIT"]; !ok {
		t.Errorf("no GOMEMLIMIT in env")
	} else if n, err := goMemLimit(e.Value); err != nil || limit > 0 && (float64(n) < 0.85*float64(limit) || float64(n) > 0.95*float64(limit)) {
		t.Errorf("GOMEMLIMIT=%s (%d bytes, %v), want about 90 %% of the memory limit %d", e.Value, n, err, limit)
	}

	// Security.
	psc, csc := pod.SecurityContext, ctr.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", psc)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v: want a read-only root, no privilege escalation, all capabilities dropped", csc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("automountServiceAccountToken: want false")
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Errorf("enableServiceLinks: want false (Service variables would land in pico-edge's PICO_* namespace)")
	}

	// Files: the data dir on a writable volume, secrets on Secret volumes.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mountOf := func(path string) (corev1.VolumeMount, corev1.Volume, bool) {
		for _, m := range ctr.VolumeMounts {
			if path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/") {
				return m, volumes[m.Name], true
			}
		}
		return corev1.VolumeMount{}, corev1.Volume{}, false
	}
	if m, v, ok := mountOf(f["--data-dir"]); !ok || m.MountPath != f["--data-dir"] || m.ReadOnly || v.EmptyDir == nil {
		t.Errorf("--data-dir=%s: want it to be the mount path of a writable emptyDir", f["--data-dir"])
	}
	// Every other file a flag names (the auth keys too) is a Secret's.
	for _, flag := range []string{"--cluster-secret-file", "--tls-cert", "--tls-key"} {
		if _, ok := f[flag]; !ok {
			t.Errorf("no %s", flag)
		}
	}
	for _, flag := range slices.Sorted(maps.Keys(f)) {
		if flag == "--data-dir" || !strings.HasPrefix(f[flag], "/") {
			continue
		}
		if m, v, ok := mountOf(f[flag]); !ok || !m.ReadOnly || v.Secret == nil || v.Secret.SecretName == "" || m.MountPath == f[flag] {
			t.Errorf("%s=%s: want a file of a read-only Secret volume", flag, f[flag])
		}
	}
}

// keys returns the sorted keys of m.
func keys(m map[string]bool) []string { return slices.Sorted(maps.Keys(m)) }

func sameKeys(a, b map[string]bool) bool { return slices.Equal(keys(a), keys(b)) }

// TestManifestAgentExample checks the agent Deployment against the base:
// it dials the agents Service on its port, with pico-agent from the image.
func TestManifestAgentExample(t *testing.T) {
	c := decodeCluster(t, baseObjects(t))
	b, err := os.ReadFile(filepath.Join(manifestDir, "examples", "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs := splitObjects(t, "examples/agent.yaml", b)
	if len(objs) != 1 || objs[0].kind != "Deployment" {
		t.Fatalf("examples/agent.yaml: %d objects, want one Deployment", len(objs))
	}
	d := decode(t, objs[0]).(*appsv1.Deployment)
	var agent *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if ctr := &d.Spec.Template.Spec.Containers[i]; slices.Equal(ctr.Command, []string{"/usr/local/bin/pico-agent"}) {
			agent = ctr
		}
	}
	if agent == nil || len(agent.Args) < 3 {
		t.Fatalf("no container runs /usr/local/bin/pico-agent KIND ENDPOINT UPSTREAM")
	}
	f := flags(t, agent.Args[3:])
	if got := agent.Args[:3]; got[0] != "http" {
		t.Errorf("agent args %v, want http ENDPOINT UPSTREAM", got)
	}
	host, port, err := net.SplitHostPort(f["--edge"])
	if err != nil {
		t.Fatalf("--edge=%s: %v", f["--edge"], err)
	}
	svcName, ns, _ := strings.Cut(host, ".")
	svc := c.services[svcName]
	if svc == nil || ns != namespace+".svc" {
		t.Fatalf("--edge host %q: want <agents Service>.%s.svc", host, namespace)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		cp, ok := containerPort(c.edgeContainer(t), p.TargetPort, corev1.ProtocolUDP)
		return fmt.Sprint(p.Port) == port && p.Protocol == corev1.ProtocolUDP && ok && cp.ContainerPort == 8001
	}) {
		t.Errorf("--edge=%s: Service %s has no UDP port %s to the agent port", f["--edge"], svcName, port)
	}
	if psc := d.Spec.Template.Spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("agent pod: want runAsNonRoot")
	}
}

// TestManifestKustomize builds the base with `kubectl kustomize` (kubectl's
// built-in kustomize works offline) and checks the result: the same
// objects, namespaced, with the image set, passing the same checks.
func TestManifestKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not in PATH (Debian: apt-get install kubernetes-client); the other manifest tests do not need it")
	}
	out, err := exec.Command(kubectl, "kustomize", manifestDir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", manifestDir, err, stderrOf(err))
	}
	built := splitObjects(t, "kubectl kustomize", out)
	want := map[string]bool{}
	for _, o := range baseObjects(t) {
		want[o.kind+"/"+o.name] = true
	}
	got := map[string]bool{}
	for _, o := range built {
		got[o.kind+"/"+o.name] = true
		if o.kind != "Namespace" && o.ns != namespace {
			t.Errorf("%s/%s: namespace %q, want %q", o.kind, o.name, o.ns, namespace)
		}
	}
	if !sameKeys(got, want) {
		t.Errorf("kubectl kustomize made %v, want %v", keys(got), keys(want))
	}
	c := decodeCluster(t, built)
	k := readKustomization(t)
	if img := c.edgeContainer(t).Image; len(k.Images) != 1 || img != "pico-edge:"+k.Images[0].NewTag {
		t.Errorf("image %q after kustomize, want pico-edge:%s", img, k.Images[0].NewTag)
	}
	checkCluster(t, c)
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// ---------------------------------------------------------------------------
// Dockerfile

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case
	args string
	line int
}

type stage struct {
	from, name string
	ins        []instruction
}

func parseDockerfile(t testing.TB) []stage {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile:%d: %s before FROM", in.line, in.cmd)
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	return stages
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// buildCommand returns the build stage's go build command: its environment
// assignments and its words, with double quotes removed.
func buildCommand(t testing.TB, build stage) (env, args []string) {
	t.Helper()
	for _, in := range build.all("RUN") {
		if !strings.Contains(in.args, "go build") {
			continue
		}
		words := regexp.MustCompile(`"[^"]*"|\S+`).FindAllString(in.args, -1)
		for i, w := range words {
			words[i] = strings.Trim(w, `"`)
		}
		for len(words) > 0 && strings.Contains(words[0], "=") {
			env = append(env, words[0])
			words = words[1:]
		}
		return env, words
	}
	t.Fatalf("the build stage has no RUN go build")
	return nil, nil
}

// TestDockerfile checks the image's stages, user, ports and paths, and
// that they agree with go.mod and the Kubernetes manifests.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) != 2 {
		t.Fatalf("%d stages, want a build and a runtime stage", len(stages))
	}
	build, run := stages[0], stages[1]
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil || build.from != "golang:"+string(m[1]) || build.name == "" {
		t.Errorf("build stage FROM %s AS %q, want golang:<go.mod's go version> AS a name", build.from, build.name)
	}
	if !regexp.MustCompile(`^(gcr\.io/distroless/static(-debian\d+)?:nonroot|scratch)$`).MatchString(run.from) {
		t.Errorf("runtime stage FROM %s, want distroless static nonroot or scratch", run.from)
	}
	names := map[string]bool{build.name: true}
	for _, in := range run.all("COPY") {
		if from := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(in.args); from == nil || !names[from[1]] {
			t.Errorf("Dockerfile:%d: COPY %s: want --from= a build stage", in.line, in.args)
		}
	}
	env, args := buildCommand(t, build)
	if !slices.Contains(env, "CGO_ENABLED=0") || !slices.Contains(args, "-trimpath") ||
		!slices.Contains(args, "-s -w") || !slices.Contains(args, "./cmd/pico-edge") || !slices.Contains(args, "./cmd/pico-agent") {
		t.Errorf("go build: env %q args %q, want CGO_ENABLED=0, -trimpath, -ldflags \"-s -w\", ./cmd/pico-edge and ./cmd/pico-agent", env, args)
	}

	c := decodeCluster(t, baseObjects(t))
	ctr := c.edgeContainer(t)
	users := run.all("USER")
	if len(users) != 1 {
		t.Fatalf("runtime stage has %d USER instructions, want 1", len(users))
	}
	uid, gid, _ := strings.Cut(users[0].args, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %s: want a numeric non-root user (Kubernetes' runAsNonRoot checks the number)", users[0].args)
	} else if psc := c.sts.Spec.Template.Spec.SecurityContext; psc.RunAsUser == nil || *psc.RunAsUser != int64(n) {
		t.Errorf("USER %s, but the StatefulSet runs as %v", uid, psc.RunAsUser)
	}
	if _, err := strconv.Atoi(gid); gid != "" && err != nil {
		t.Errorf("USER %s: numeric group, please", users[0].args)
	}

	exposed := map[string]bool{}
	for _, in := range run.all("EXPOSE") {
		for _, p := range strings.Fields(in.args) {
			exposed[strings.ToUpper(p)] = true
		}
	}
	ports := map[string]bool{}
	for _, p := range ctr.Ports {
		ports[fmt.Sprintf("%d/%s", p.ContainerPort, p.Protocol)] = true
	}
	if !sameKeys(exposed, ports) {
		t.Errorf("EXPOSE %v, but the StatefulSet's container ports are %v", keys(exposed), keys(ports))
	}

	var dataDir string
	for _, in := range run.all("ENV") {
		if v, ok := strings.CutPrefix(in.args, "PICO_DATA_DIR="); ok {
			dataDir = v
		}
	}
	vols := run.all("VOLUME")
	if dataDir == "" || len(vols) != 1 || vols[0].args != `["`+dataDir+`"]` {
		t.Errorf("ENV PICO_DATA_DIR=%q and VOLUME %v: want the data directory to be the volume", dataDir, vols)
	}
	if f := flags(t, ctr.Args); f["--data-dir"] != dataDir {
		t.Errorf("the StatefulSet's --data-dir=%s, the image's PICO_DATA_DIR=%s", f["--data-dir"], dataDir)
	}
	ep := run.all("ENTRYPOINT")
	if len(ep) != 1 || ep[0].args != `["/usr/local/bin/pico-edge"]` {
		t.Errorf("ENTRYPOINT %v, want [\"/usr/local/bin/pico-edge\"] (exec form: signals reach pico-edge)", ep)
	}
	copied := ""
	for _, in := range run.all("COPY") {
		copied += in.args + "\n"
	}
	for _, b := range []string{"/out/pico-edge", "/out/pico-agent"} {
		if !strings.Contains(copied, b) || !strings.Contains(copied, "/usr/local/bin/") {
			t.Errorf("the runtime stage does not copy %s to /usr/local/bin/", b)
		}
	}
}

// ---------------------------------------------------------------------------
// Building as the Dockerfile does, and running the pod's arguments

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds pico-edge and pico-agent with the Dockerfile's go build
// command, in a copy of the build context that deploy/Dockerfile.dockerignore
// leaves, and returns the directory they are in. Skipped under -short.
func binaries(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds pico-edge and pico-agent: skipped under -short")
	}
	buildOnce.Do(func() { buildErr = buildAsDockerfile(t) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func buildAsDockerfile(t *testing.T) error {
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	ignore, err := readDockerignore("Dockerfile.dockerignore")
	if err != nil {
		return err
	}
	ctxDir, err := os.MkdirTemp("", "pico-docker-context-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctxDir)
	out, err := os.MkdirTemp("", "pico-docker-out-")
	if err != nil {
		return err
	}
	buildDir = out // removed by TestMain
	if err := copyContext(root, ctxDir, ignore); err != nil {
		return err
	}
	env, args := buildCommand(t, parseDockerfile(t)[0])
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			args[i+1] = out + string(filepath.Separator)
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s (in the Dockerfile's build context): %v\n%s", strings.Join(append(env, args...), " "), err, b)
	}
	return nil
}

// readDockerignore returns the patterns of a .dockerignore file as
// regular expressions over slash-separated paths relative to the context.
func readDockerignore(path string) ([]*regexp.Regexp, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*regexp.Regexp
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if strings.HasPrefix(p, "!") {
			return nil, fmt.Errorf("%s: exceptions (%s) are not supported by this test", path, p)
		}
		p = strings.TrimPrefix(p, "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(p); i++ {
			switch {
			case strings.HasPrefix(p[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				re.WriteString(".*")
				i++
			case p[i] == '*':
				re.WriteString("[^/]*")
			case p[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			}
		}
		re.WriteString("$")
		out = append(out, regexp.MustCompile(re.String()))
	}
	return out, sc.Err()
}

func ignored(patterns []*regexp.Regexp, rel string) bool {
	for p := rel; p != "." && p != ""; p = filepath.ToSlash(filepath.Dir(p)) {
		for _, re := range patterns {
			if re.MatchString(p) {
				return true
			}
		}
	}
	return false
}

func copyContext(root, dst string, ignore []*regexp.Regexp) error {
	return filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignored(ignore, rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

// TestDockerfileBuild runs the Dockerfile's go build in the context its
// .dockerignore leaves, and checks the binaries are static and stripped:
// what FROM distroless/static needs.
func TestDockerfileBuild(t *testing.T) {
	dir := binaries(t)
	for _, name := range []string{"pico-edge", "pico-agent"} {
		path := filepath.Join(dir, name)
		f, err := elf.Open(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s has a %s program header: not a static binary", name, p.Type)
			}
		}
		for _, s := range []string{".symtab", ".debug_info"} {
			if f.Section(s) != nil {
				t.Errorf("%s has a %s section: -ldflags \"-s -w\" should strip it", name, s)
			}
		}
		f.Close()
		if out, err := exec.Command(path, "--help").CombinedOutput(); err != nil {
			t.Errorf("%s --help: %v\n%s", name, err, out)
		}
	}
}

// TestManifestFlagsExist checks every flag the StatefulSet and the agent
// example pass against the binaries' --help.
func TestManifestFlagsExist(t *testing.T) {
	c := decodeCluster(t, baseObjects(t))
	checkEdgeFlags(t, c)
	help := func(bin string, args ...string) string { return binaryHelp(t, bin, args...) }
	b, _ := os.ReadFile(filepath.Join(manifestDir, "examples", "agent.yaml"))
	d := decode(t, splitObjects(t, "agent.yaml", b)[0]).(*appsv1.Deployment)
	for _, ctr := range d.Spec.Template.Spec.Containers {
		if len(ctr.Command) == 0 || ctr.Command[0] != "/usr/local/bin/pico-agent" {
			continue
		}
		agentHelp := help("pico-agent", ctr.Args[0])
		for f := range flags(t, ctr.Args[3:]) {
			if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(f) + `\b`).MatchString(agentHelp) {
				t.Errorf("pico-agent %s has no flag %s", ctr.Args[0], f)
			}
		}
	}
}

// TestManifestPodStarts runs pico-edge with the StatefulSet's arguments and
// environment, as the kubelet would (with $(VARS) expanded, the Secrets'
// files from examples/dev-cert.sh, and listeners moved to 127.0.0.1 so the
// test reaches nothing else), then: the probes answer 200 on their paths,
// pico-agent with the agent example's TLS settings registers an endpoint,
// and SIGTERM drains and exits 0 within terminationGracePeriodSeconds less
// the preStop sleep.
func TestManifestPodStarts(t *testing.T) {
	checkPodStarts(t, decodeCluster(t, baseObjects(t)))
}

// checkPodStarts is TestManifestPodStarts for the objects of c.
func checkPodStarts(t *testing.T, c cluster) {
	dir := binaries(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not in PATH: examples/dev-cert.sh needs it")
	}
	ctr := c.edgeContainer(t)
	pod := c.sts.Spec.Template.Spec

	// The Secrets as the kubelet mounts them.
	certDir := t.TempDir()
	script, _ := filepath.Abs(filepath.Join(manifestDir, "examples", "dev-cert.sh"))
	cmd := exec.Command("sh", script, "pico.example.com", namespace)
	cmd.Dir = certDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dev-cert.sh: %v\n%s", err, out)
	}
	keyOut, err := exec.Command("openssl", "rand", "-base64", "32").Output()
	if err != nil {
		t.Fatalf("openssl rand: %v", err)
	}
	files := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		files[m.MountPath] = filepath.Join(t.TempDir(), "mnt")
		os.MkdirAll(files[m.MountPath], 0o755)
	}
	f := flags(t, ctr.Args)
	write := func(flag string, b []byte) {
		p := f[flag]
		dirOf, ok := files[filepath.Dir(p)]
		if !ok {
			t.Fatalf("%s=%s is not in a mounted volume", flag, p)
		}
		if err := os.WriteFile(filepath.Join(dirOf, filepath.Base(p)), b, 0o440); err != nil {
			t.Fatal(err)
		}
	}
	// kubectl create secret generic --from-literal: no trailing newline.
	write("--cluster-secret-file", bytes.TrimSpace(keyOut))
	for flag, file := range map[string]string{"--tls-cert": "tls.crt", "--tls-key": "tls.key"} {
		b, err := os.ReadFile(filepath.Join(certDir, file))
		if err != nil {
			t.Fatal(err)
		}
		write(flag, b)
	}

	vars := map[string]string{"POD_NAME": c.sts.Name + "-0", "POD_IP": "127.0.0.1", "POD_NAMESPACE": namespace}
	env := []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	for _, e := range ctr.Env {
		if e.ValueFrom == nil {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	var args []string
	for _, a := range ctr.Args {
		name, value, _ := strings.Cut(a, "=")
		if name == "--join" {
			continue // resolving the cluster DNS name would leave this machine
		}
		value = regexp.MustCompile(`\$\(([A-Z_]+)\)`).ReplaceAllStringFunc(value, func(s string) string { return vars[s[2:len(s)-1]] })
		for mount, local := range files {
			if value == mount || strings.HasPrefix(value, mount+"/") {
				value = local + strings.TrimPrefix(value, mount)
			}
		}
		args = append(args, name+"="+value)
	}
	for _, l := range listeners {
		args = append(args, l.flag+"=127.0.0.1:0")
	}
	edge := startLogged(t, filepath.Join(dir, "pico-edge"), env, args...)
	ready := edge.waitJSON(t, "edge node ready")
	admin, _ := ready["admin_addr"].(string)
	agentAddr, _ := ready["agent_addr"].(string)
	if admin == "" || agentAddr == "" {
		t.Fatalf("ready line without admin_addr or agent_addr: %v", ready)
	}
	if ready["node_id"] != vars["POD_NAME"] {
		t.Errorf("node_id %v, want the pod name %s", ready["node_id"], vars["POD_NAME"])
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, p := range []*corev1.Probe{ctr.ReadinessProbe, ctr.LivenessProbe} {
		resp, err := hc.Get("http://" + admin + p.HTTPGet.Path)
		if err != nil {
			t.Fatalf("probe %s: %v", p.HTTPGet.Path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("probe GET %s: %d, want 200", p.HTTPGet.Path, resp.StatusCode)
		}
	}

	// The agent example's TLS settings: --ca ca.crt and the name of the
	// agents Service, here reached at the node's loopback address.
	b, _ := os.ReadFile(filepath.Join(manifestDir, "examples", "agent.yaml"))
	d := decode(t, splitObjects(t, "agent.yaml", b)[0]).(*appsv1.Deployment)
	var agentArgs []string
	for _, ctr := range d.Spec.Template.Spec.Containers {
		if len(ctr.Command) > 0 && ctr.Command[0] == "/usr/local/bin/pico-agent" {
			agentArgs = ctr.Args
		}
	}
	af := flags(t, agentArgs[3:])
	serverName, _, _ := net.SplitHostPort(af["--edge"])
	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go upstream.Serve(ln)
	t.Cleanup(func() { upstream.Close() })
	agent := startLogged(t, filepath.Join(dir, "pico-agent"), env, agentArgs[0], agentArgs[1], ln.Addr().String(),
		"--edge="+agentAddr, "--server-name="+serverName, "--ca="+filepath.Join(certDir, "ca.crt"), "--log-format=json")
	agent.waitLine(t, fmt.Sprintf("endpoint %s (%s) is registered", agentArgs[1], agentArgs[0]))

	// The TCP transport at the agent port's number (container port
	// agent-tcp), as an Ingress or a Gateway forwards it through the
	// Service …-agents-http: a plain HTTP upgrade at /_pico/agent.
	edge.mu.Lock()
	twinOff := slices.ContainsFunc(edge.lines, func(l string) bool { return strings.Contains(l, "agent links over TCP are off") })
	edge.mu.Unlock()
	if twinOff { // another process took the TCP port of the agent port's number
		t.Log("pico-edge could not listen on TCP at the agent port's number: not checking the TCP transport")
	} else {
		tcpAgent := startLogged(t, filepath.Join(dir, "pico-agent"), env, agentArgs[0], agentArgs[1], ln.Addr().String(),
			"--edge=http://"+agentAddr+agentPath, "--connections=1", "--server-name="+serverName,
			"--ca="+filepath.Join(certDir, "ca.crt"), "--log-format=json")
		tcpAgent.waitLine(t, fmt.Sprintf("endpoint %s (%s) is registered on %s (over TCP)", agentArgs[1], agentArgs[0], vars["POD_NAME"]))
	}

	// SIGTERM arrives after the preStop sleep; the drain must end before
	// the rest of the grace period does.
	budget := time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second - time.Duration(ctr.Lifecycle.PreStop.Sleep.Seconds)*time.Second
	start := time.Now()
	edge.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-edge.exited:
		if !edge.cmd.ProcessState.Success() {
			t.Errorf("pico-edge exited with %s after SIGTERM, want 0", edge.cmd.ProcessState)
		}
		t.Logf("drained and exited in %s (budget %s)", time.Since(start).Round(time.Millisecond), budget)
	case <-time.After(budget):
		t.Errorf("pico-edge still running %s after SIGTERM: the kubelet would SIGKILL it", budget)
	}
}

// binaryHelp returns the --help of pico-edge or pico-agent (with args, a
// subcommand), built as the Dockerfile builds them.
func binaryHelp(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binaries(t), bin), append(args, "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", bin, err, out)
	}
	return string(out)
}

// checkEdgeFlags checks every flag of c's pico-edge container against
// pico-edge --help.
func checkEdgeFlags(t *testing.T, c cluster) {
	t.Helper()
	edgeHelp := binaryHelp(t, "pico-edge")
	for f := range flags(t, c.edgeContainer(t).Args) {
		if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(f) + `\b`).MatchString(edgeHelp) {
			t.Errorf("pico-edge has no flag %s", f)
		}
	}
}

// logged is a process whose output lines tests wait for.
type logged struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	grew   chan struct{}
	exited chan struct{}
}

func startLogged(t *testing.T, path string, env []string, args ...string) *logged {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &logged{cmd: exec.Command(path, args...), grew: make(chan struct{}), exited: make(chan struct{})}
	l.cmd.Env, l.cmd.Stdout, l.cmd.Stderr = env, pw, pw
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	pw.Close()
	go func() {
		defer close(l.exited)
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			close(l.grew)
			l.grew = make(chan struct{})
			l.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
		pr.Close()
		l.cmd.Wait()
	}()
	t.Cleanup(func() {
		l.cmd.Process.Kill() // by PID; a no-op once it exited
		<-l.exited
		if t.Failed() {
			l.mu.Lock()
			t.Logf("output of %s:\n%s", filepath.Base(path), strings.Join(l.lines, "\n"))
			l.mu.Unlock()
		}
	})
	return l
}

// waitFor returns the first line match accepts, failing after 30 s or when
// the process exits first.
func (l *logged) waitFor(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for next := 0; ; {
		l.mu.Lock()
		lines, grew := l.lines[next:], l.grew
		l.mu.Unlock()
		for _, line := range lines {
			if match(line) {
				return line
			}
		}
		next += len(lines)
		select {
		case <-grew:
		case <-l.exited:
			l.mu.Lock()
			done := next == len(l.lines)
			l.mu.Unlock()
			if done {
				t.Fatalf("%s exited before logging %s", filepath.Base(l.cmd.Path), what)
			}
		case <-ctx.Done():
			t.Fatalf("%s logged no %s within 30s", filepath.Base(l.cmd.Path), what)
		}
	}
}

func (l *logged) waitLine(t *testing.T, sub string) string {
	t.Helper()
	return l.waitFor(t, strconv.Quote(sub), func(s string) bool { return strings.Contains(s, sub) })
}

// waitJSON waits for a JSON log line with message msg and returns it.
func (l *logged) waitJSON(t *testing.T, msg string) map[string]any {
	t.Helper()
	var out map[string]any
	l.waitFor(t, strconv.Quote(msg), func(s string) bool {
		var m map[string]any
		if json.Unmarshal([]byte(s), &m) == nil && m["msg"] == msg {
			out = m
			return true
		}
		return false
	})
	return out
}

// TestManifestDocs checks that docs/kubernetes.md tells how to create each
// Secret and ConfigMap the manifests mount, under their names and keys.
func TestManifestDocs(t *testing.T) {
	b, err := os.ReadFile("../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	docs := string(b)
	c := decodeCluster(t, baseObjects(t))
	ctr := c.edgeContainer(t)
	f := flags(t, ctr.Args)
	mounted := map[string]string{} // volume name -> mount path
	for _, m := range ctr.VolumeMounts {
		mounted[m.Name] = m.MountPath
	}
	for _, v := range c.sts.Spec.Template.Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		var want string
		switch path := mounted[v.Name]; {
		case filepath.Dir(f["--tls-cert"]) == path:
			want = "create secret tls " + v.Secret.SecretName + " "
		case filepath.Dir(f["--cluster-secret-file"]) == path:
			want = "create secret generic " + v.Secret.SecretName + " \\\n  --from-literal=" + filepath.Base(f["--cluster-secret-file"]) + "="
		default:
			t.Errorf("Secret volume %s is used by no flag", v.Name)
			continue
		}
		if !strings.Contains(docs, want) {
			t.Errorf("docs/kubernetes.md lacks %q", want)
		}
	}
	ab, _ := os.ReadFile(filepath.Join(manifestDir, "examples", "agent.yaml"))
	d := decode(t, splitObjects(t, "agent.yaml", ab)[0]).(*appsv1.Deployment)
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && !strings.Contains(docs, "create configmap "+v.ConfigMap.Name+" ") {
			t.Errorf("docs/kubernetes.md does not create the agent example's ConfigMap %s", v.ConfigMap.Name)
		}
	}
}

// TestManifestKubectlDryRun runs `kubectl apply --dry-run=client` on the
// base, the agent example and the Helm chart's rendering. kubectl needs an API server's discovery even
// in client dry-run, so the test serves a minimal one on 127.0.0.1: the
// resource types the manifests use, and 404 for every object (all are
// new). Schema validation needs the server's OpenAPI, which this server
// lacks (--validate=false): the strict decoding above covers it. A write
// request fails the test: a client dry run must send none.
func TestManifestKubectlDryRun(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not in PATH (Debian: apt-get install kubernetes-client)")
	}
	resources := map[string][]map[string]any{
		"/api/v1": {
			{"name": "namespaces", "kind": "Namespace", "namespaced": false},
			{"name": "services", "kind": "Service", "namespaced": true},
			{"name": "configmaps", "kind": "ConfigMap", "namespaced": true},
		},
		"/apis/apps/v1": {
			{"name": "statefulsets", "kind": "StatefulSet", "namespaced": true},
			{"name": "deployments", "kind": "Deployment", "namespaced": true},
		},
		"/apis/policy/v1": {
			{"name": "poddisruptionbudgets", "kind": "PodDisruptionBudget", "namespaced": true},
		},
		"/apis/networking.k8s.io/v1": {
			{"name": "ingresses", "kind": "Ingress", "namespaced": true},
		},
		"/apis/gateway.networking.k8s.io/v1": {
			{"name": "httproutes", "kind": "HTTPRoute", "namespaced": true},
		},
	}
	group := func(name string) map[string]any {
		gv := map[string]any{"groupVersion": name + "/v1", "version": "v1"}
		return map[string]any{"name": name, "versions": []any{gv}, "preferredVersion": gv}
	}
	var mu sync.Mutex
	var writes []string
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			mu.Lock()
			writes = append(writes, r.Method+" "+r.URL.Path)
			mu.Unlock()
			reply(w, http.StatusMethodNotAllowed, map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405})
			return
		}
		switch p := r.URL.Path; {
		case p == "/api":
			reply(w, 200, map[string]any{"kind": "APIVersions", "versions": []string{"v1"},
				"serverAddressByClientCIDRs": []any{map[string]any{"clientCIDR": "0.0.0.0/0", "serverAddress": r.Host}}})
		case p == "/apis":
			reply(w, 200, map[string]any{"kind": "APIGroupList", "apiVersion": "v1", "groups": []any{group("apps"), group("policy"), group("networking.k8s.io"), group("gateway.networking.k8s.io")}})
		case resources[p] != nil:
			list := resources[p]
			for _, res := range list {
				res["singularName"] = ""
				res["verbs"] = []string{"get", "list", "create", "update", "patch", "delete"}
			}
			reply(w, 200, map[string]any{"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": strings.TrimPrefix(strings.TrimPrefix(p, "/apis/"), "/api/"), "resources": list})
		default:
			reply(w, http.StatusNotFound, map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "http://`+ln.Addr().String()+`"}}]
users: [{name: test, user: {}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
`), 0o600)
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--kubeconfig", kubeconfig, "--cache-dir", t.TempDir(),
			"apply", "--dry-run=client", "--validate=false"}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl apply --dry-run=client %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	created := func(what, out string, objs []object) {
		t.Helper()
		for _, o := range objs {
			want := strings.ToLower(o.kind) + "/" + o.name + " created (dry run)"
			if g := map[string]string{"StatefulSet": "apps", "PodDisruptionBudget": "policy", "Ingress": "networking.k8s.io", "HTTPRoute": "gateway.networking.k8s.io"}[o.kind]; g != "" {
				want = strings.ToLower(o.kind) + "." + g + "/" + o.name + " created (dry run)"
			}
			if !strings.Contains(out, want) {
				t.Errorf("%s: no %q in:\n%s", what, want, out)
			}
		}
	}
	created("kubectl apply -k", run("-k", manifestDir), baseObjects(t))
	// The Helm chart's objects, as `helm template` renders them, with its
	// defaults and with the Ingress and the HTTPRoute.
	for _, values := range []string{"", "{ingress: {enabled: true, host: agents.example.com}, gateway: {enabled: true, parentRefs: [{name: shared}]}}"} {
		rendered, err := helmTemplate(t, "pico-edge", namespace, values)
		if err != nil {
			t.Fatalf("helm template %s: %v", values, err)
		}
		var manifest []string
		for _, o := range rendered {
			manifest = append(manifest, string(o.doc))
		}
		chartFile := filepath.Join(t.TempDir(), "chart.yaml")
		os.WriteFile(chartFile, []byte(strings.Join(manifest, "\n---\n")), 0o600)
		created("kubectl apply -f <helm template "+values+">", run("-n", namespace, "-f", chartFile), rendered)
	}
	if out := run("-n", namespace, "-f", filepath.Join(manifestDir, "examples", "agent.yaml")); !strings.Contains(out, "deployment.apps/pico-agent-demo created (dry run)") {
		t.Errorf("kubectl apply -f examples/agent.yaml:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(writes) > 0 {
		t.Errorf("kubectl sent writes in a client dry run: %v", writes)
	}
}

// TestDocsAgentRoutes checks the Ingress and the HTTPRoute that
// docs/kubernetes.md shows for agents over the TCP transport: they decode
// strictly, route exactly /_pico/agent, and their backend is a Service of
// the base with a port to the pods' agent port over TCP.
func TestDocsAgentRoutes(t *testing.T) {
	d, err := os.ReadFile("../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	c := decodeCluster(t, baseObjects(t))
	ctr := c.edgeContainer(t)
	kinds := map[string]int{}
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(d), -1) {
		for _, o := range splitObjects(t, "docs/kubernetes.md", []byte(m[1])) {
			kinds[o.kind]++
			switch o.kind {
			case "Ingress":
				ing := decode(t, o).(*networkingv1.Ingress)
				if ing.Namespace != namespace || len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].HTTP == nil || len(ing.Spec.Rules[0].HTTP.Paths) != 1 {
					t.Fatalf("docs' Ingress: namespace %q rules %+v, want %s and one path", ing.Namespace, ing.Spec.Rules, namespace)
				}
				p := ing.Spec.Rules[0].HTTP.Paths[0]
				if p.Path != agentPath || p.PathType == nil || *p.PathType != networkingv1.PathTypeExact || p.Backend.Service == nil {
					t.Fatalf("docs' Ingress path %+v, want %s Exact to a Service", p, agentPath)
				}
				checkAgentBackend(t, c, ctr, p.Backend.Service.Name, func(sp corev1.ServicePort) bool { return sp.Name == p.Backend.Service.Port.Name })
				if ing.Annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "" {
					t.Errorf("docs' Ingress sets no proxy-read-timeout")
				}
			case "HTTPRoute":
				var r httpRoute
				if err := yaml.UnmarshalStrict(o.doc, &r); err != nil {
					t.Fatalf("docs' HTTPRoute: %v", err)
				}
				if r.Metadata.Namespace != namespace {
					t.Errorf("docs' HTTPRoute in namespace %q, want %s, the Service's", r.Metadata.Namespace, namespace)
				}
				if r.APIVersion != "gateway.networking.k8s.io/v1" || len(r.Spec.Rules) != 1 || len(r.Spec.Rules[0].Matches) != 1 || len(r.Spec.Rules[0].BackendRefs) != 1 {
					t.Fatalf("docs' HTTPRoute %s rules %+v, want v1 and one rule with one match and one backend", r.APIVersion, r.Spec.Rules)
				}
				rule := r.Spec.Rules[0]
				if m := rule.Matches[0].Path; m.Type != "Exact" || m.Value != agentPath {
					t.Errorf("docs' HTTPRoute match %+v, want Exact %s", m, agentPath)
				}
				if rule.Timeouts == nil || rule.Timeouts.Request != "0s" {
					t.Errorf("docs' HTTPRoute timeouts %+v, want request 0s", rule.Timeouts)
				}
				b := rule.BackendRefs[0]
				checkAgentBackend(t, c, ctr, b.Name, func(sp corev1.ServicePort) bool { return sp.Port == b.Port })
			}
		}
	}
	if kinds["Ingress"] != 1 || kinds["HTTPRoute"] != 1 || kinds["Gateway"] != 1 {
		t.Errorf("docs/kubernetes.md shows %v, want one Ingress, one Gateway and one HTTPRoute", kinds)
	}
}
