package deploy

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// The chart is rendered and linted with Helm's own packages (the module
// helm.sh/helm/v3), which is what the helm binary runs: `helm template`
// is action.Install with ClientOnly and DryRun, `helm lint` is pkg/lint.

const chartDir = "helm/pico-edge"

// helmTemplate renders the chart as `helm template RELEASE deploy/helm/pico-edge
// -n NS -f values` would, and returns its objects or the error helm reports.
func helmTemplate(t testing.TB, release, ns, values string) ([]object, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(values), &vals); err != nil {
		t.Fatalf("values %q: %v", values, err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.DryRun, install.ClientOnly, install.Replace = true, true, true
	install.ReleaseName, install.Namespace = release, ns
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	return splitObjects(t, "helm template", []byte(rel.Manifest)), nil
}

// serviceMonitor is the part of prometheus-operator's ServiceMonitor
// (monitoring.coreos.com/v1) the chart sets; decoded strictly, a field
// outside it fails the test.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// httpRoute is the part of the Gateway API's HTTPRoute
// (gateway.networking.k8s.io/v1) the chart sets, with the fields of a
// parentRef; decoded strictly, a field outside it fails the test.
type httpRoute struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		ParentRefs []struct {
			Group       string `json:"group,omitempty"`
			Kind        string `json:"kind,omitempty"`
			Namespace   string `json:"namespace,omitempty"`
			Name        string `json:"name"`
			SectionName string `json:"sectionName,omitempty"`
			Port        *int32 `json:"port,omitempty"`
		} `json:"parentRefs"`
		Hostnames []string `json:"hostnames"`
		Rules     []struct {
			Matches []struct {
				Path struct {
					Type  string `json:"type"`
					Value string `json:"value"`
				} `json:"path"`
			} `json:"matches"`
			BackendRefs []struct {
				Name string `json:"name"`
				Port int32  `json:"port"`
			} `json:"backendRefs"`
			Timeouts *struct {
				Request string `json:"request"`
			} `json:"timeouts"`
		} `json:"rules"`
	} `json:"spec"`
}

// extras are the chart's optional objects outside the base's kinds.
type extras struct {
	monitors  []serviceMonitor
	ingresses []*networkingv1.Ingress
	routes    []httpRoute
}

// helmCluster renders the chart and decodes its objects strictly; the
// ServiceMonitors and HTTPRoutes (kinds outside the Kubernetes API) and
// the Ingresses (not in the base) come apart.
func helmCluster(t testing.TB, release, ns, values string) (cluster, extras) {
	t.Helper()
	objs, err := helmTemplate(t, release, ns, values)
	if err != nil {
		t.Fatalf("helm template with values %q: %v", values, err)
	}
	var kube []object
	var x extras
	for _, o := range objs {
		switch o.kind {
		case "ServiceMonitor":
			var sm serviceMonitor
			if err := yaml.UnmarshalStrict(o.doc, &sm); err != nil {
				t.Fatalf("%s: %v", o.source, err)
			}
			x.monitors = append(x.monitors, sm)
		case "HTTPRoute":
			var r httpRoute
			if err := yaml.UnmarshalStrict(o.doc, &r); err != nil {
				t.Fatalf("%s: %v", o.source, err)
			}
			x.routes = append(x.routes, r)
		case "Ingress":
			x.ingresses = append(x.ingresses, decode(t, o).(*networkingv1.Ingress))
		default:
			kube = append(kube, o)
		}
	}
	return decodeCluster(t, kube), x
}

// TestHelmLint runs Helm's linter (`helm lint --strict`) on the chart with
// its defaults and with every optional value set: a warning fails.
func TestHelmLint(t *testing.T) {
	for name, values := range map[string]string{
		"defaults": "",
		"all values set": `{replicaCount: 5, image: {repository: registry.example.com/pico-edge, tag: v1},
			auth: {secretName: pico-edge-auth, hmacSecretKey: hmac.key, jwksKey: jwks.json},
			extraArgs: [--auth-issuer=https://issuer.example.com], serviceMonitor: {enabled: true, labels: {release: prom}},
			service: {proxy: {annotations: {a: b}}},
			ingress: {enabled: true, host: agents.example.com, tlsSecretName: agents-tls, annotations: {a: b}},
			gateway: {enabled: true, parentRefs: [{name: shared, namespace: infra}], hostnames: [agents.example.com], annotations: {a: b}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yaml.Unmarshal([]byte(values), &vals); err != nil {
				t.Fatal(err)
			}
			l := lint.All(chartDir, vals, namespace, false)
			n := 0
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %s", m)
				} else {
					t.Logf("helm lint: %s", m)
				}
				n++
			}
			if l.HighestSeverity >= support.WarningSev && n == 0 {
				t.Errorf("helm lint: severity %d without messages", l.HighestSeverity)
			}
		})
	}
}

// TestHelmTemplate renders the chart with its defaults and passes the
// objects through the checks the Kustomize base passes.
func TestHelmTemplate(t *testing.T) {
	c, x := helmCluster(t, "pico-edge", namespace, "")
	checkCluster(t, c)
	if len(x.monitors) != 0 || len(x.ingresses) != 0 || len(x.routes) != 0 {
		t.Errorf("%d ServiceMonitors, %d Ingresses, %d HTTPRoutes by default, want none (serviceMonitor, ingress and gateway are off)",
			len(x.monitors), len(x.ingresses), len(x.routes))
	}
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	if img := c.edgeContainer(t).Image; img != "pico-edge:"+chrt.Metadata.AppVersion {
		t.Errorf("image %q, want pico-edge:<appVersion %s>", img, chrt.Metadata.AppVersion)
	}
}

// TestHelmMatchesKustomize checks that `helm install pico-edge -n pico`
// creates what `kubectl apply -k deploy/kubernetes` does: the same
// Services with the same ports, the same StatefulSet (ports, probes, args,
// env, preStop, resources, security context, volumes and mounts) and PDB,
// once the labels each tool adds and the image are left aside.
func TestHelmMatchesKustomize(t *testing.T) {
	base := decodeCluster(t, baseObjects(t))
	chart, _ := helmCluster(t, "pico-edge", namespace, "")
	if got, want := mapsKeys(chart.services), mapsKeys(base.services); !slices.Equal(got, want) {
		t.Errorf("chart Services %v, Kustomize %v", got, want)
	}
	for name, s := range base.services {
		if cs := chart.services[name]; cs != nil {
			sameJSON(t, "Service "+name, normalService(cs), normalService(s))
		}
	}
	sameJSON(t, "StatefulSet", normalStatefulSet(chart.sts), normalStatefulSet(base.sts))
	sameJSON(t, "PodDisruptionBudget", normalPDB(chart.pdb), normalPDB(base.pdb))
}

// mapsKeys returns the sorted keys of m.
func mapsKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// normalService is s's spec without its selector (labels differ: Helm
// selects its release's pods too).
func normalService(s *corev1.Service) any {
	spec := s.Spec.DeepCopy()
	spec.Selector = nil
	return spec
}

func normalStatefulSet(s *appsv1.StatefulSet) any {
	spec := s.Spec.DeepCopy()
	spec.Selector = nil
	spec.Template.Labels = nil
	for i := range spec.Template.Spec.TopologySpreadConstraints {
		spec.Template.Spec.TopologySpreadConstraints[i].LabelSelector = nil
	}
	for i := range spec.Template.Spec.Containers {
		spec.Template.Spec.Containers[i].Image = ""
	}
	return spec
}

func normalPDB(p *policyv1.PodDisruptionBudget) any {
	spec := p.Spec.DeepCopy()
	spec.Selector = nil
	return spec
}

// sameJSON fails when got and want differ as indented JSON, listing the
// lines only one of them has.
func sameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	g, _ := json.MarshalIndent(got, "", "  ")
	w, _ := json.MarshalIndent(want, "", "  ")
	if string(g) == string(w) {
		return
	}
	gl, wl := strings.Split(string(g), "\n"), strings.Split(string(w), "\n")
	var diff []string
	for _, l := range gl {
		if !slices.Contains(wl, l) {
			diff = append(diff, "chart only:     "+strings.TrimSpace(l))
		}
	}
	for _, l := range wl {
		if !slices.Contains(gl, l) {
			diff = append(diff, "Kustomize only: "+strings.TrimSpace(l))
		}
	}
	if len(diff) == 0 {
		diff = append(diff, "the same lines in another order")
	}
	t.Errorf("%s: the chart and the Kustomize base differ:\n%s", what, strings.Join(diff, "\n"))
}

// TestHelmValues renders the chart with each value the chart documents and
// checks its effect; every rendering still passes checkCluster but for
// the replica count it checks.
func TestHelmValues(t *testing.T) {
	for name, tc := range map[string]struct {
		release, values string
		check           func(t *testing.T, c cluster, ctr *corev1.Container, f map[string]string, x extras)
		skipReplicas    bool
		flagsExist      bool // check the flags against pico-edge --help (skipped under -short)
	}{
		"replicaCount": {values: "replicaCount: 5", skipReplicas: true, check: func(t *testing.T, c cluster, _ *corev1.Container, _ map[string]string, _ extras) {
			if r := c.sts.Spec.Replicas; r == nil || *r != 5 {
				t.Errorf("replicas %v, want 5", r)
			}
		}},
		"image": {values: "image: {repository: registry.example.com/pico-edge, tag: v1.2.3, pullPolicy: Always}", check: func(t *testing.T, _ cluster, ctr *corev1.Container, _ map[string]string, _ extras) {
			if ctr.Image != "registry.example.com/pico-edge:v1.2.3" || ctr.ImagePullPolicy != corev1.PullAlways {
				t.Errorf("image %q pull policy %q, want registry.example.com/pico-edge:v1.2.3, Always", ctr.Image, ctr.ImagePullPolicy)
			}
		}},
		"resources": {values: "{resources: {requests: {cpu: '1', memory: 1Gi}, limits: {memory: 2Gi}}, goMemLimit: 1843MiB}", check: func(t *testing.T, _ cluster, ctr *corev1.Container, _ map[string]string, _ extras) {
			if got := ctr.Resources.Limits.Memory().String(); got != "2Gi" || ctr.Resources.Requests.Cpu().String() != "1" {
				t.Errorf("resources %v, want the values'", ctr.Resources)
			}
		}},
		"auth keys from an existing Secret": {values: "auth: {secretName: pico-edge-auth, hmacSecretKey: hmac.key, ed25519PublicKeyKey: ed.pem}", check: func(t *testing.T, c cluster, ctr *corev1.Container, f map[string]string, _ extras) {
			if f["--auth-hmac-secret-file"] != "/etc/pico/auth/hmac.key" || f["--auth-ed25519-public-key"] != "/etc/pico/auth/ed.pem" {
				t.Errorf("args %v, want --auth-hmac-secret-file and --auth-ed25519-public-key in /etc/pico/auth", ctr.Args)
			}
			if _, ok := f["--auth-rsa-public-key"]; ok {
				t.Errorf("--auth-rsa-public-key set without its value")
			}
			if !slices.ContainsFunc(c.sts.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
				return v.Name == "auth" && v.Secret != nil && v.Secret.SecretName == "pico-edge-auth"
			}) {
				t.Errorf("no volume of the Secret pico-edge-auth")
			}
		}, flagsExist: true},
		"tls and cluster secret names": {values: "{tls: {secretName: my-tls}, clusterSecret: {secretName: my-cluster, key: k}}", check: func(t *testing.T, c cluster, _ *corev1.Container, f map[string]string, _ extras) {
			secrets := map[string]string{}
			for _, v := range c.sts.Spec.Template.Spec.Volumes {
				if v.Secret != nil {
					secrets[v.Name] = v.Secret.SecretName
				}
			}
			if secrets["tls"] != "my-tls" || secrets["cluster-secret"] != "my-cluster" || f["--cluster-secret-file"] != "/etc/pico/cluster/k" {
				t.Errorf("secret volumes %v, --cluster-secret-file=%s; want my-tls, my-cluster and its key k", secrets, f["--cluster-secret-file"])
			}
		}},
		"extraArgs": {values: "extraArgs: [--auth-issuer=https://issuer.example.com, --max-inflight-per-endpoint=100]", check: func(t *testing.T, c cluster, ctr *corev1.Container, f map[string]string, _ extras) {
			if f["--auth-issuer"] != "https://issuer.example.com" || f["--max-inflight-per-endpoint"] != "100" {
				t.Errorf("args %v, want the extra arguments", ctr.Args)
			}
		}, flagsExist: true},
		"gracePeriodSeconds": {values: "gracePeriodSeconds: 60", check: func(t *testing.T, c cluster, _ *corev1.Container, f map[string]string, _ extras) {
			if g := c.sts.Spec.Template.Spec.TerminationGracePeriodSeconds; f["--grace-period"] != "60s" || g == nil || *g != 75 {
				t.Errorf("--grace-period=%s terminationGracePeriodSeconds %v, want 60s and 75", f["--grace-period"], g)
			}
		}},
		"another release name": {release: "edge", check: func(t *testing.T, c cluster, _ *corev1.Container, f map[string]string, _ extras) {
			if c.sts.Name != "edge-pico-edge" || c.services["edge-pico-edge-proxy"] == nil {
				t.Errorf("StatefulSet %s, Services %v: want the prefix edge-pico-edge", c.sts.Name, mapsKeys(c.services))
			}
		}},
		"fullnameOverride": {release: "x", values: "fullnameOverride: edge", check: func(t *testing.T, c cluster, _ *corev1.Container, _ map[string]string, _ extras) {
			if c.sts.Name != "edge" || c.services["edge-gossip"] == nil || c.pdb.Name != "edge" {
				t.Errorf("StatefulSet %s, PDB %s, Services %v: want the name edge", c.sts.Name, c.pdb.Name, mapsKeys(c.services))
			}
		}},
		"ingress": {values: `ingress: {enabled: true, host: agents.pico.example.com, tlsSecretName: agents-tls,
			annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: "7200", example.com/x: v}}`, check: func(t *testing.T, c cluster, ctr *corev1.Container, _ map[string]string, x extras) {
			if len(x.ingresses) != 1 || len(x.routes) != 0 {
				t.Fatalf("%d Ingresses and %d HTTPRoutes, want one Ingress", len(x.ingresses), len(x.routes))
			}
			ing := x.ingresses[0]
			if ing.Name != "pico-edge-agents" || ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
				t.Errorf("Ingress %s class %v, want pico-edge-agents of class nginx", ing.Name, ing.Spec.IngressClassName)
			}
			// The timeouts become ingress-nginx's annotations; a key of
			// ingress.annotations wins.
			want := map[string]string{"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200",
				"nginx.ingress.kubernetes.io/proxy-send-timeout": "3600", "example.com/x": "v"}
			if !maps.Equal(ing.Annotations, want) {
				t.Errorf("annotations %v, want %v", ing.Annotations, want)
			}
			if len(ing.Spec.TLS) != 1 || !slices.Equal(ing.Spec.TLS[0].Hosts, []string{"agents.pico.example.com"}) || ing.Spec.TLS[0].SecretName != "agents-tls" {
				t.Errorf("tls %+v, want agents.pico.example.com with Secret agents-tls", ing.Spec.TLS)
			}
			if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != "agents.pico.example.com" || ing.Spec.Rules[0].HTTP == nil || len(ing.Spec.Rules[0].HTTP.Paths) != 1 {
				t.Fatalf("rules %+v, want one for agents.pico.example.com with one path", ing.Spec.Rules)
			}
			p := ing.Spec.Rules[0].HTTP.Paths[0]
			if p.Path != agentPath || p.PathType == nil || *p.PathType != networkingv1.PathTypeExact || p.Backend.Service == nil {
				t.Fatalf("path %+v, want %s Exact to a Service", p, agentPath)
			}
			checkAgentBackend(t, c, ctr, p.Backend.Service.Name, func(sp corev1.ServicePort) bool {
				return sp.Name == p.Backend.Service.Port.Name && p.Backend.Service.Port.Number == 0
			})
		}},
		"ingress without timeouts or TLS": {values: "ingress: {enabled: true, host: a.example.com, timeoutSeconds: null, className: ''}", check: func(t *testing.T, c cluster, ctr *corev1.Container, _ map[string]string, x extras) {
			if len(x.ingresses) != 1 {
				t.Fatalf("%d Ingresses, want 1", len(x.ingresses))
			}
			if ing := x.ingresses[0]; len(ing.Annotations) != 0 || ing.Spec.TLS != nil || ing.Spec.IngressClassName != nil {
				t.Errorf("annotations %v, tls %v, class %v: want none", ing.Annotations, ing.Spec.TLS, ing.Spec.IngressClassName)
			}
		}},
		"gateway": {values: `gateway: {enabled: true, parentRefs: [{name: shared, namespace: gateway-infra, sectionName: https}],
			hostnames: [agents.pico.example.com]}`, check: func(t *testing.T, c cluster, ctr *corev1.Container, _ map[string]string, x extras) {
			if len(x.routes) != 1 || len(x.ingresses) != 0 {
				t.Fatalf("%d HTTPRoutes and %d Ingresses, want one HTTPRoute", len(x.routes), len(x.ingresses))
			}
			r := x.routes[0]
			if r.APIVersion != "gateway.networking.k8s.io/v1" || r.Metadata.Name != "pico-edge-agents" || r.Metadata.Labels["app.kubernetes.io/instance"] != "pico-edge" {
				t.Errorf("HTTPRoute %s %s labels %v", r.APIVersion, r.Metadata.Name, r.Metadata.Labels)
			}
			if pr := r.Spec.ParentRefs; len(pr) != 1 || pr[0].Name != "shared" || pr[0].Namespace != "gateway-infra" || pr[0].SectionName != "https" {
				t.Errorf("parentRefs %+v, want the values'", pr)
			}
			if !slices.Equal(r.Spec.Hostnames, []string{"agents.pico.example.com"}) {
				t.Errorf("hostnames %v", r.Spec.Hostnames)
			}
			if len(r.Spec.Rules) != 1 || len(r.Spec.Rules[0].Matches) != 1 || len(r.Spec.Rules[0].BackendRefs) != 1 {
				t.Fatalf("rules %+v, want one with one match and one backend", r.Spec.Rules)
			}
			rule := r.Spec.Rules[0]
			if m := rule.Matches[0].Path; m.Type != "Exact" || m.Value != agentPath {
				t.Errorf("path match %+v, want Exact %s", m, agentPath)
			}
			if rule.Timeouts == nil || rule.Timeouts.Request != "0s" {
				t.Errorf("timeouts %+v, want request 0s (off: the Gateway never cuts a long-lived link)", rule.Timeouts)
			}
			// A backendRef names a Service port by number: every port of
			// that number must be the TCP transport's.
			b := rule.BackendRefs[0]
			checkAgentBackend(t, c, ctr, b.Name, func(sp corev1.ServicePort) bool { return sp.Port == b.Port })
		}},
		"gateway without timeouts": {values: "gateway: {enabled: true, parentRefs: [{name: g}], requestTimeout: ''}", check: func(t *testing.T, c cluster, _ *corev1.Container, _ map[string]string, x extras) {
			if len(x.routes) != 1 || len(x.routes[0].Spec.Rules) != 1 {
				t.Fatalf("HTTPRoutes %+v, want one with one rule", x.routes)
			}
			if r := x.routes[0]; r.Spec.Rules[0].Timeouts != nil || r.Spec.Hostnames != nil {
				t.Errorf("timeouts %+v hostnames %v, want neither", r.Spec.Rules[0].Timeouts, r.Spec.Hostnames)
			}
		}},
		"ingress and gateway off": {values: "{ingress: {enabled: false, host: a.example.com}, gateway: {enabled: false, parentRefs: [{name: g}]}}", check: func(t *testing.T, c cluster, _ *corev1.Container, _ map[string]string, x extras) {
			if len(x.ingresses) != 0 || len(x.routes) != 0 {
				t.Errorf("%d Ingresses and %d HTTPRoutes, want neither", len(x.ingresses), len(x.routes))
			}
		}},
		"serviceMonitor": {values: "serviceMonitor: {enabled: true, interval: 15s, labels: {release: prom}}", check: func(t *testing.T, c cluster, ctr *corev1.Container, _ map[string]string, x extras) {
			if len(x.monitors) != 1 {
				t.Fatalf("%d ServiceMonitors, want 1", len(x.monitors))
			}
			sm := x.monitors[0]
			if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Metadata.Labels["release"] != "prom" {
				t.Errorf("ServiceMonitor apiVersion %q labels %v", sm.APIVersion, sm.Metadata.Labels)
			}
			var selected []*corev1.Service
			for _, s := range c.services {
				if hasLabels(s.Labels, sm.Spec.Selector.MatchLabels) {
					selected = append(selected, s)
				}
			}
			if len(selected) != 1 {
				t.Fatalf("the ServiceMonitor selects %d Services, want the metrics Service alone", len(selected))
			}
			s := selected[0]
			if s.Spec.ClusterIP != corev1.ClusterIPNone || s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				t.Errorf("metrics Service %s: want headless, never a load balancer", s.Name)
			}
			if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" || sm.Spec.Endpoints[0].Interval != "15s" {
				t.Fatalf("endpoints %+v, want /metrics every 15s", sm.Spec.Endpoints)
			}
			if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool {
				cp, ok := containerPort(ctr, p.TargetPort, corev1.ProtocolTCP)
				return p.Name == sm.Spec.Endpoints[0].Port && ok && cp.ContainerPort == 8002
			}) {
				t.Errorf("the ServiceMonitor's port %q is not the admin port 8002 of %s", sm.Spec.Endpoints[0].Port, s.Name)
			}
		}},
	} {
		t.Run(name, func(t *testing.T) {
			release := tc.release
			if release == "" {
				release = "pico-edge"
			}
			c, x := helmCluster(t, release, namespace, tc.values)
			ctr := c.edgeContainer(t)
			tc.check(t, c, ctr, flags(t, ctr.Args), x)
			if tc.skipReplicas {
				three := int32(3)
				c.sts.Spec.Replicas = &three
			}
			checkCluster(t, c)
			if tc.flagsExist {
				checkEdgeFlags(t, c)
			}
		})
	}
}

// agentPath is the TCP transport's upgrade path (quicutil.AgentPath).
const agentPath = "/_pico/agent"

// checkAgentBackend checks that the Service svcName exists, selects the
// edge pods (checkCluster) and that every port of it that port accepts is
// TCP to the container's agent port 8001 over TCP, where pico-edge takes
// the upgrade, and that there is one.
func checkAgentBackend(t *testing.T, c cluster, ctr *corev1.Container, svcName string, port func(corev1.ServicePort) bool) {
	t.Helper()
	s := c.services[svcName]
	if s == nil {
		t.Fatalf("the backend Service %s is not among the chart's %v", svcName, mapsKeys(c.services))
	}
	n := 0
	for _, sp := range s.Spec.Ports {
		if !port(sp) {
			continue
		}
		n++
		cp, ok := containerPort(ctr, sp.TargetPort, corev1.ProtocolTCP)
		if sp.Protocol != corev1.ProtocolTCP || !ok || cp.ContainerPort != 8001 {
			t.Errorf("backend %s port %s (%d/%s): want TCP to container port 8001/TCP", s.Name, sp.Name, sp.Port, sp.Protocol)
		}
	}
	if n == 0 {
		t.Errorf("the backend names no port of Service %s (%+v)", s.Name, s.Spec.Ports)
	}
}

// TestHelmValuesRefused checks that values the chart cannot honour stop
// the rendering with a message that names them.
func TestHelmValuesRefused(t *testing.T) {
	for name, tc := range map[string]struct{ values, want string }{
		"auth key without its Secret": {"auth: {hmacSecretKey: hmac.key}", "auth.secretName"},
		"no TLS Secret":               {"tls: {secretName: ''}", "tls.secretName"},
		"no cluster Secret":           {"clusterSecret: {secretName: null}", "clusterSecret.secretName"},
		"ingress without its host":    {"ingress: {enabled: true}", "ingress.host"},
		"gateway without a Gateway":   {"gateway: {enabled: true, hostnames: [a.example.com]}", "gateway.parentRefs"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := helmTemplate(t, "pico-edge", namespace, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template with %s: error %v, want one naming %s", tc.values, err, tc.want)
			}
		})
	}
}

// TestHelmPodStarts runs pico-edge with the chart's arguments, as
// TestManifestPodStarts does with the base's.
func TestHelmPodStarts(t *testing.T) {
	c, _ := helmCluster(t, "pico-edge", namespace, "")
	checkPodStarts(t, c)
}

// TestHelmFlagsExist checks the flags of the chart with every auth key set
// against pico-edge --help.
func TestHelmFlagsExist(t *testing.T) {
	var keys []string
	for _, k := range []string{"hmacSecretKey", "rsaPublicKeyKey", "ecdsaPublicKeyKey", "ed25519PublicKeyKey", "jwksKey"} {
		keys = append(keys, fmt.Sprintf("%s: %s", k, strings.ToLower(k)))
	}
	c, _ := helmCluster(t, "pico-edge", namespace, "auth: {secretName: a, "+strings.Join(keys, ", ")+"}")
	f := flags(t, c.edgeContainer(t).Args)
	n := 0
	for flag := range f {
		if strings.HasPrefix(flag, "--auth-") {
			n++
		}
	}
	if n != len(keys) {
		t.Errorf("%d --auth-* flags for %d keys: %v", n, len(keys), c.edgeContainer(t).Args)
	}
	checkEdgeFlags(t, c)
}

// TestHelmValuesDocumented checks that docs/kubernetes.md's values table
// has a row for every value of values.yaml, with its default, and no row
// for a value the chart lacks.
func TestHelmValuesDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(b, &vals); err != nil {
		t.Fatal(err)
	}
	defaults := map[string]string{}
	var flatten func(prefix string, v any)
	flatten = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if len(v) == 0 {
				defaults[prefix] = "{}"
			}
			for k, x := range v {
				flatten(strings.TrimPrefix(prefix+"."+k, "."), x)
			}
		case []any:
			if len(v) == 0 {
				defaults[prefix] = "[]"
			} else {
				defaults[prefix] = fmt.Sprint(v)
			}
		case string:
			defaults[prefix] = v
			if v == "" {
				defaults[prefix] = `""`
			}
		default:
			defaults[prefix] = fmt.Sprint(v)
		}
	}
	flatten("", vals)
	d, err := os.ReadFile("../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(d)
	for _, k := range slices.Sorted(maps.Keys(defaults)) {
		if row := "| `" + k + "` | `" + defaults[k] + "` |"; !strings.Contains(doc, row) {
			t.Errorf("docs/kubernetes.md has no row %q", row)
		}
	}
	i := strings.Index(doc, "| value | default | what |")
	if i < 0 {
		t.Fatal("docs/kubernetes.md has no values table")
	}
	table, _, _ := strings.Cut(doc[i:], "\n\n")
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-zA-Z.]+)` \\| ").FindAllStringSubmatch(table, -1) {
		if _, ok := defaults[m[1]]; !ok {
			t.Errorf("docs/kubernetes.md documents value %s, which values.yaml lacks", m[1])
		}
	}
}
