// Command pico-edge runs a Pico edge node: clients send HTTP requests to its
// proxy port, agents connect to its agent port over QUIC.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/alecthomas/kong"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/cmd/internal/cli"
	"github.com/pico-edge/pico/edge"
	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/edge/cluster"
	"github.com/pico-edge/pico/quicutil"
)

type CLI struct {
	PrintVersion kong.VersionFlag `name:"version" help:"Print the version, the Go version and the platform, and exit." env:"-"`
	Config       cli.ConfigFile   `help:"YAML file of flag values (keys are flag names: proxy-addr: :8000); $${VAR} takes an environment variable. A flag or PICO_* variable wins over the file." placeholder:"FILE"`

	ProxyAddr       string `help:"Address of the plain HTTP/1.1 front door (TCP)." default:":8000" group:"Listeners"`
	ProxyTLSAddr    string `help:"Address of the HTTPS front door: HTTP/1.1 and HTTP/2 over TLS on TCP, HTTP/3 on UDP on the same port; empty disables it." default:":8443" group:"Listeners"`
	AgentAddr       string `help:"Address agents and forwarders connect to (UDP, QUIC)." default:":8001" group:"Listeners"`
	PassthroughAddr string `help:"Address of the TLS passthrough door (TCP): each connection goes, unterminated, to the tls endpoint (pico-agent tls) its SNI's first label names; the upstream's certificate reaches the client. Empty disables it; not with --proxy-auth." default:"" group:"Listeners"`
	AdminAddr       string `help:"Address of the admin API: /healthz, /readyz, /metrics, /status/... (TCP); empty disables it. It shows agent IDs, addresses, endpoints and the auth set-up: keep it inside your network (:8002 for probes and Prometheus in a container)." default:"127.0.0.1:8002" group:"Listeners"`
	AdminTokenFile  string `help:"File with the admin token: enables the admin port's operations (POST /admin/drain, POST /admin/agents/SESSION/goaway, DELETE /admin/agents/SESSION) for requests with 'Authorization: Bearer TOKEN'. Without it the admin port is read-only." type:"path" group:"Listeners"`
	AdminPprof      bool   `help:"Serve /debug/pprof/ on the admin port, behind the admin token." group:"Listeners"`

	NodeID  string `help:"ID of this node in logs and status (default: random edge-xxxxxxxx)." group:"Node"`
	DataDir string `help:"Directory for the development CA and certificate and the QUIC reset key." default:"${data_dir}" type:"path" group:"Node"`

	TLSCert  string   `help:"Certificate (PEM) served to agents, reloaded when the file changes. Without it a development certificate is generated in --data-dir." type:"path" group:"TLS"`
	TLSKey   string   `help:"Private key (PEM) of --tls-cert." type:"path" group:"TLS"`
	TLSHost  []string `help:"Extra names (DNS or IP) for the development certificate, besides localhost, *.localhost, 127.0.0.1 and ::1." sep:"," group:"TLS"`
	DevCADir string   `help:"Directory of the development CA (ca.pem, ca-key.pem) that signs the development certificate (default: --data-dir). Nodes of a local cluster given the same directory share one CA, so one --ca works for all of them; pico-edge's default --data-dir (${data_dir}) is where pico-agent finds it without --ca." type:"path" group:"TLS"`

	ACMEDomain      string        `help:"Base domain for certificates from an ACME CA (RFC 8555): endpoint foo gets a certificate for foo.DOMAIN, obtained on demand, only once an agent has registered foo on some node of the cluster. Point *.DOMAIN at the nodes. Names it does not cover get the --tls-cert or development certificate. See docs/certificates.md." placeholder:"DOMAIN" group:"ACME"`
	ACMEEmail       string        `help:"Contact e-mail given to the ACME CA (expiry notices)." group:"ACME"`
	ACMEDirectory   string        `help:"Directory URL of the ACME CA (any RFC 8555 CA: Let's Encrypt, its staging, a private CA)." default:"${acme_directory}" group:"ACME"`
	ACMECARoots     string        `name:"acme-ca-roots" help:"PEM bundle of the CA certificates that the ACME directory's own HTTPS is checked against (a private CA); default: the system's roots." type:"path" group:"ACME"`
	ACMECacheDir    string        `help:"Directory of the ACME account key, certificates and challenge answers (default: acme/ in --data-dir). Nodes given one shared directory (a shared volume) obtain each certificate once and all serve it." type:"path" group:"ACME"`
	ACMERenewBefore time.Duration `help:"How long before expiry an ACME certificate is renewed, at most 720h; a failed renewal is tried again 30 to 60 minutes later while the certificate is still served." default:"${acme_renew_before}" group:"ACME"`

	ReadHeaderTimeout      time.Duration `help:"Time a client has to send its request header." default:"${read_header_timeout}" group:"Limits"`
	IdleTimeout            time.Duration `help:"Idle time after which a client keep-alive connection is closed." default:"${idle_timeout}" group:"Limits"`
	MaxHeaderBytes         int           `help:"Largest request header accepted (431 beyond), up to 98304." default:"${max_header_bytes}" group:"Limits"`
	ResponseHeaderTimeout  time.Duration `help:"Time the upstream has to start its response (504 after it)." default:"${response_header_timeout}" group:"Limits"`
	StreamIdleTimeout      time.Duration `help:"Idle time after which an HTTP stream (WebSocket, SSE, slow body) is cut." default:"${stream_idle_timeout}" group:"Limits"`
	TCPIdleTimeout         time.Duration `help:"Idle time after which a TCP forward is cut." default:"${tcp_idle_timeout}" group:"Limits"`
	OpenStreamTimeout      time.Duration `help:"Time to wait for a stream to an agent at its stream limit (503 after it), and for a TCP agent's answer." default:"${open_stream_timeout}" group:"Limits"`
	MaxEndpointsPerAgent   int           `help:"Endpoints one agent connection may serve." default:"${max_endpoints_per_agent}" group:"Limits"`
	MaxStreamsPerAgent     int           `help:"Streams this node may have open to one agent connection (requests in flight and idle keep-alive streams); beyond, 503 at once." default:"${max_streams_per_agent}" group:"Limits"`
	MaxConnsPerToken       int           `help:"Agent connections one token may hold to this node at once (when tokens are checked); beyond, refused with a limit error." default:"${max_conns_per_token}" group:"Limits"`
	MaxInflightPerEndpoint int           `help:"Requests in flight to one endpoint on this node; beyond, 503 at once." default:"${max_inflight_per_endpoint}" group:"Limits"`
	MaxConnsPerEndpoint    int           `help:"Long-lived connections open to one endpoint on this node: upgraded HTTP connections (WebSockets) and TCP connections; beyond, 503 (a forward: overloaded) at once. They do not count against --max-inflight-per-endpoint." default:"${max_conns_per_endpoint}" group:"Limits"`
	RegistrationsPerSecond int           `help:"Register messages one agent connection may send a second (burst: twice as many); beyond, the agent waits." default:"${registrations_per_second}" group:"Limits"`
	HandshakesPerSecond    int           `help:"New QUIC connections a second, on the agent port and on the HTTP/3 door each, above which clients must first pass a Retry (one more round trip); negative: never." default:"${handshakes_per_second}" group:"Limits"`
	MaxConnsPerListener    int           `help:"Open client connections on each TCP front door." default:"${max_conns_per_listener}" group:"Limits"`
	MaxConns               int           `help:"Open client connections on all TCP front doors." default:"${max_conns}" group:"Limits"`
	NewConnsPerIP          int           `help:"New client connections a second from one IP address (burst: twice as many; --trusted-proxies exempt); beyond, 429 on plain HTTP and a closed connection on TLS; negative: no limit." default:"${new_conns_per_ip}" group:"Limits"`
	GracePeriod            time.Duration `help:"Time requests, WebSockets and TCP streams in flight get to finish on SIGTERM." default:"${grace_period}" aliases:"shutdown-grace" group:"Drain"`
	PublicURL              []string      `help:"Base URLs clients reach this node's front doors at (https://example.com), comma separated: each agent is told, and prints, the URLs of its HTTP endpoints under them (https://foo.example.com/). Default, with the development certificate: http://localhost:PORT of --proxy-addr and https://pico.localhost:PORT of --proxy-tls-addr; with --tls-cert: none." sep:"," placeholder:"URL" group:"Listeners"`
	DrainDelay             time.Duration `help:"On SIGTERM, time to keep taking new client connections after /readyz turned 503, so load balancers notice first (Kubernetes: use a preStop sleep instead)." default:"0s" group:"Drain"`

	GossipAddr        string        `help:"Address for cluster gossip (hashicorp/memberlist, TCP and UDP on one port). Default: ${default_gossip_addr} when the node is in a cluster (--join or --cluster-secret-file given), else none: a node alone opens no gossip port." placeholder:"ADDR" group:"Cluster"`
	Join              []string      `help:"Nodes to join: host:port or DNS names (a Kubernetes headless service), resolved again until joined and every ${rejoin_interval} after." sep:"," group:"Cluster"`
	AdvertiseAddr     string        `help:"Address other nodes reach this one at (host or host:port), for NAT and Kubernetes; default: the gossip bind address, or a private IP of the machine." group:"Cluster"`
	ClusterSecretFile string        `help:"File with the cluster secret (base64 of 32 random bytes: openssl rand -base64 32); it encrypts gossip and authenticates relays. Default: cluster.key in --data-dir, created on first start; every node needs the same one." type:"path" group:"Cluster"`
	ClusterLabel      string        `help:"Cluster name: nodes with another label ignore this one." default:"${cluster_label}" group:"Cluster"`
	RebalanceInterval time.Duration `help:"How often this node compares its agent links with the other nodes' and asks links beyond its share to move (the agent connects elsewhere first); an agent whose new link comes back to this node is not asked again for ${rebalance_backoff}, doubling up to ${rebalance_backoff_max}. 0 turns rebalancing off: agents stay on the node they connected to. At least 1s otherwise." default:"${rebalance_interval}" group:"Cluster"`

	AllowUnderscoresInHeaders bool     `help:"Pass request header names that contain '_' (rejected with 400 by default)." group:"Limits"`
	TrustedProxies            []string `help:"CIDRs of proxies in front of the edge (load balancers) whose X-Forwarded-* and Forwarded headers are kept and extended; from anyone else they are replaced." sep:"," group:"Limits"`

	AccessLog       bool     `help:"Log one line per request and TCP connection." default:"true" negatable:"" group:"Logging"`
	AccessLogSample float64  `help:"Fraction of requests below status 500 that get an access-log line (errors always do)." default:"${access_log_sample}" group:"Logging"`
	AccessLogOff    []string `help:"Endpoints whose requests and connections are never logged, comma separated." sep:"," group:"Logging"`
	cli.LogFlags    `embed:"" group:"Logging"`

	AuthFlags `embed:""`

	// The node is the default command, so that 'pico-edge [flags]' runs
	// it and 'pico-edge --help' lists its flags.
	Serve struct{} `cmd:"" default:"1" hidden:"" help:"Run the edge node (the default)."`
	Token TokenCmd `cmd:"" help:"Mint an HS256 token from an HMAC secret file (created if missing) and print it: pico-edge token --endpoints foo,bar --ttl 24h --hmac-secret-file FILE."`

	Status StatusCmd `cmd:"" help:"Print a running node's endpoints, agents, cluster members or certificates as tables, from its admin API: pico-edge status endpoints|agents|members|certs [--admin URL] [--json]."`
}

func newParser(c *CLI) (*kong.Kong, error) {
	return kong.New(c,
		kong.Name("pico-edge"),
		kong.Description("Pico edge node: proxies HTTP requests and TCP connections to agents connected over QUIC.\n\nEvery flag can also be set with a PICO_* environment variable, e.g. PICO_PROXY_ADDR, or in the --config file."),
		kong.DefaultEnvars("PICO"),
		defaultVars(),
	)
}

// self is how the user ran pico-edge, for the commands its hints print;
// main sets it from os.Args[0].
var self = "pico-edge"

// selfCommand returns "go run ./cmd/pico-edge" when arg0 is a binary that
// go run built (it lives in a go-build directory: the build cache, or a
// go-build* work directory under the temporary directory), else
// "pico-edge".
func selfCommand(arg0 string) string {
	for _, elem := range strings.Split(filepath.ToSlash(filepath.Dir(arg0)), "/") {
		if strings.HasPrefix(elem, "go-build") {
			return "go run ./cmd/pico-edge"
		}
	}
	return "pico-edge"
}

func main() {
	self = selfCommand(os.Args[0])
	var c CLI
	parser, err := newParser(&c)
	if err != nil {
		panic(err) // the command structs are wrong
	}
	kctx, ok := cli.Parse(parser, os.Args[1:], os.Stderr)
	if !ok {
		os.Exit(cli.ExitError)
	}
	if what, ok := strings.CutPrefix(kctx.Command(), "status "); ok {
		if err := c.Status.run(os.Stdout, what, time.Now()); err != nil {
			fmt.Fprintln(os.Stderr, "pico-edge status:", err)
			kctx.Exit(1)
		}
		return
	}
	if kctx.Command() == "token" {
		if err := c.Token.run(os.Stdout, os.Stderr, time.Now()); err != nil {
			fmt.Fprintln(os.Stderr, "pico-edge token:", err)
			kctx.Exit(1)
		}
		return
	}
	log := c.Logger(os.Stderr)
	if err := c.run(log); err != nil {
		log.Error("pico-edge failed", "err", err)
		kctx.Exit(1)
	}
}

func (c *CLI) run(log *slog.Logger) error {
	ctx, cancel := cli.SignalContext()
	var bg sync.WaitGroup // the certificate reloader
	defer bg.Wait()
	defer cancel() // runs first: ends the reloader
	// pico-edge checks the UDP buffers itself and says what to do.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")

	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	getCert, caFile, err := c.certificates(ctx, &bg, log)
	if err != nil {
		return err
	}
	set := metrics.NewSet()
	var srv *edge.Server // set before it serves, which is before any handshake
	acmeClient, err := c.acme(getCert, func(id string) bool { return srv.Serves(id) }, set, log)
	if err != nil {
		return err
	}
	var challenges http.Handler
	source := admin.Certs{Source: "development"}
	if c.TLSCert != "" {
		source.Source = "files"
	}
	certsStatus := func() admin.Certs { return source }
	if acmeClient != nil {
		getCert, challenges = acmeClient.GetCertificate, acmeClient.HTTPHandler(nil)
		certsStatus = func() admin.Certs {
			st := admin.Certs{Source: "acme", ACMEDomain: acmeClient.Domain()}
			for _, ci := range acmeClient.Certificates() {
				st.Certificates = append(st.Certificates, admin.Cert{Name: ci.Name, Issuer: ci.Issuer, NotAfter: ci.NotAfter})
			}
			return st
		}
	}
	resetKey, err := loadResetKey(filepath.Join(c.DataDir, "quic-reset.key"))
	if err != nil {
		return err
	}
	accessLog := log.With("log", "access")
	if !c.AccessLog {
		accessLog = slog.New(slog.DiscardHandler)
	}
	var trusted []netip.Prefix
	for _, c := range c.TrustedProxies {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("--trusted-proxies %q: want a CIDR such as 10.0.0.0/8: %w", c, err)
		}
		trusted = append(trusted, p)
	}
	accessLogOff := make(map[string]bool, len(c.AccessLogOff))
	for _, id := range c.AccessLogOff {
		accessLogOff[strings.ToLower(strings.TrimSpace(id))] = true
	}
	adminToken, err := c.adminToken()
	if err != nil {
		return err
	}
	cluster, err := c.cluster(log)
	if err != nil {
		return err
	}
	auth, err := c.AuthFlags.config()
	if err != nil {
		return err
	}
	if c.PassthroughAddr != "" && c.ProxyAuth {
		return errors.New("--passthrough-addr cannot be used with --proxy-auth: the edge never sees a passthrough connection's bytes, so it cannot check a client's token")
	}
	lns, err := c.listen()
	if err != nil {
		return err
	}
	srv, err = edge.New(edge.Config{
		Metrics:                   set,
		ACMEChallenges:            challenges,
		Certs:                     certsStatus,
		PublicURLs:                c.publicURLs(lns),
		Auth:                      auth,
		TrustedProxies:            trusted,
		NodeID:                    c.NodeID,
		Version:                   cli.Version(),
		GetCertificate:            getCert,
		StatelessResetKey:         resetKey,
		ReadHeaderTimeout:         c.ReadHeaderTimeout,
		IdleTimeout:               c.IdleTimeout,
		MaxHeaderBytes:            c.MaxHeaderBytes,
		ResponseHeaderTimeout:     c.ResponseHeaderTimeout,
		StreamIdleTimeout:         c.StreamIdleTimeout,
		TCPIdleTimeout:            c.TCPIdleTimeout,
		OpenStreamTimeout:         c.OpenStreamTimeout,
		MaxEndpointsPerAgent:      c.MaxEndpointsPerAgent,
		MaxInflightPerEndpoint:    c.MaxInflightPerEndpoint,
		MaxConnsPerEndpoint:       c.MaxConnsPerEndpoint,
		MaxConnsPerToken:          c.MaxConnsPerToken,
		MaxStreamsPerAgent:        c.MaxStreamsPerAgent,
		RegistrationsPerSecond:    c.RegistrationsPerSecond,
		HandshakesPerSecond:       c.HandshakesPerSecond,
		MaxConnsPerListener:       c.MaxConnsPerListener,
		MaxConns:                  c.MaxConns,
		NewConnsPerIPPerSecond:    c.NewConnsPerIP,
		AccessLogSample:           c.AccessLogSample,
		AccessLogOff:              accessLogOff,
		AdminToken:                adminToken,
		AdminPprof:                c.AdminPprof,
		ShutdownGrace:             c.GracePeriod,
		DrainDelay:                c.DrainDelay,
		Cluster:                   cluster,
		AllowUnderscoresInHeaders: c.AllowUnderscoresInHeaders,
		Logger:                    log,
		AccessLog:                 accessLog,
	})
	if err != nil {
		closeListeners(lns)
		return err
	}
	if lns.AgentTCP, err = listenAgentTCP(lns.Agent); err != nil {
		log.Warn("agent links over TCP are off on the agent port (the front doors still take them at "+quicutil.AgentPath+")", "err", err)
	}
	if caFile != "" { // a development node: say once what the network can reach
		gossip := ""
		if cluster != nil {
			gossip = cluster.GossipAddr
		}
		if open := openPorts(lns, gossip); open != "" {
			log.Warn("development node: ports open to the network", "ports", open,
				"hint", "to keep it on this machine, bind to 127.0.0.1: --proxy-addr 127.0.0.1:8000 --proxy-tls-addr 127.0.0.1:8443 --agent-addr 127.0.0.1:8001")
		}
	}
	c.printAgentHint(lns, caFile) // the node says at start who must authenticate
	return srv.Run(ctx, lns)
}

// adminToken reads --admin-token-file.
func (c *CLI) adminToken() (string, error) {
	if c.AdminTokenFile == "" {
		if c.AdminPprof {
			return "", errors.New("--admin-pprof needs --admin-token-file")
		}
		return "", nil
	}
	b, err := os.ReadFile(c.AdminTokenFile)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("--admin-token-file %s: the token has %d characters; use at least 16 (openssl rand -hex 32)", c.AdminTokenFile, len(tok))
	}
	return tok, nil
}

// defaultGossipAddr is --gossip-addr of a node in a cluster that does not
// set it.
const defaultGossipAddr = ":8003"

// inCluster reports whether the flags make the node a member of a cluster:
// --gossip-addr, --join or --cluster-secret-file. A node alone opens no
// gossip port; it routes as a cluster of one.
func (c *CLI) inCluster() bool {
	return c.GossipAddr != "" || len(c.Join) > 0 || c.ClusterSecretFile != ""
}

// cluster returns the cluster configuration, or nil for a node alone (see
// inCluster).
func (c *CLI) cluster(log *slog.Logger) (*cluster.Config, error) {
	if !c.inCluster() {
		return nil, nil
	}
	gossip := c.GossipAddr
	if gossip == "" {
		gossip = defaultGossipAddr
	}
	rebalance := c.RebalanceInterval
	switch {
	case rebalance < 0 || rebalance > 0 && rebalance < time.Second:
		return nil, fmt.Errorf("--rebalance-interval %s: want 0 (rebalancing off) or at least 1s", rebalance)
	case rebalance == 0:
		rebalance = -1 // cluster.Config: never
	}
	var secret []byte
	var err error
	if c.ClusterSecretFile != "" {
		secret, err = certs.LoadSecret(c.ClusterSecretFile)
	} else {
		var created bool
		file := filepath.Join(c.DataDir, "cluster.key")
		secret, created, err = certs.LoadOrCreateSecret(file)
		if created {
			log.Info("created a cluster secret; give every node of the cluster the same one (--cluster-secret-file)", "file", file)
		}
	}
	if err != nil {
		return nil, err
	}
	return &cluster.Config{
		Secret:            secret,
		Label:             c.ClusterLabel,
		GossipAddr:        gossip,
		AdvertiseAddr:     c.AdvertiseAddr,
		Join:              c.Join,
		RebalanceInterval: rebalance,
	}, nil
}

// devCADir is --dev-ca-dir, or --data-dir without it.
func (c *CLI) devCADir() string {
	if c.DevCADir != "" {
		return c.DevCADir
	}
	return c.DataDir
}

// acme returns the ACME client of --acme-domain, or nil without it.
func (c *CLI) acme(fallback func(*tls.ClientHelloInfo) (*tls.Certificate, error), serves func(string) bool, set *metrics.Set, log *slog.Logger) (*certs.ACME, error) {
	if c.ACMEDomain == "" {
		if c.ACMEEmail != "" || c.ACMECARoots != "" || c.ACMECacheDir != "" {
			return nil, errors.New("--acme-email, --acme-ca-roots and --acme-cache-dir need --acme-domain")
		}
		return nil, nil
	}
	if c.ACMERenewBefore <= 0 || c.ACMERenewBefore > certs.DefaultACMERenewBefore {
		return nil, fmt.Errorf("--acme-renew-before %s: want more than 0 and at most %s", c.ACMERenewBefore, duration(certs.DefaultACMERenewBefore))
	}
	var roots *x509.CertPool
	if c.ACMECARoots != "" {
		var err error
		if roots, err = certs.LoadPool(c.ACMECARoots); err != nil {
			return nil, fmt.Errorf("--acme-ca-roots: %w", err)
		}
	}
	dir := c.ACMECacheDir
	if dir == "" {
		dir = filepath.Join(c.DataDir, "acme")
	}
	a, err := certs.NewACME(certs.ACMEConfig{
		Email:       c.ACMEEmail,
		Directory:   c.ACMEDirectory,
		Roots:       roots,
		Domain:      c.ACMEDomain,
		CacheDir:    dir,
		RenewBefore: c.ACMERenewBefore,
		Serves:      serves,
		Fallback:    fallback,
		Log:         log,
		Metrics:     set,
	})
	if err != nil {
		return nil, fmt.Errorf("--acme-domain: %w", err)
	}
	log.Info("ACME: certificates on demand for the endpoints served", "names", "*."+a.Domain(), "directory", c.ACMEDirectory, "cache", dir)
	return a, nil
}

// certificates returns the agent listener's certificate source, and the
// CA file agents need when it is the development CA.
func (c *CLI) certificates(ctx context.Context, bg *sync.WaitGroup, log *slog.Logger) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), string, error) {
	if c.TLSCert != "" {
		r, err := certs.NewReloader(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, "", err
		}
		bg.Go(func() { // ends with ctx
			r.Run(ctx, certs.DefaultReloadInterval, func(err error) {
				if err != nil {
					log.Warn("certificate reload failed; serving the previous one", "err", err)
					return
				}
				log.Info("certificate reloaded", "file", c.TLSCert)
			})
		})
		return r.GetCertificate, "", nil
	}
	dev, err := certs.LoadOrCreateDev(c.devCADir(), c.DataDir, c.TLSHost)
	if err != nil {
		return nil, "", fmt.Errorf("development certificate: %w", err)
	}
	if dev.CACreated {
		log.Info("created a development CA", "file", dev.CAFile)
	}
	cert, err := dev.TLSCertificate()
	if err != nil {
		return nil, "", err
	}
	if c.ACMEDomain != "" {
		log.Info("the development certificate serves the names ACME does not (the agent port, other names)", "hosts", dev.Hosts)
	} else {
		log.Warn("serving a development certificate; use --tls-cert and --tls-key in production", "hosts", dev.Hosts)
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, dev.CAFile, nil
}

func (c *CLI) listen() (edge.Listeners, error) {
	var lns edge.Listeners
	var err error
	if lns.Proxy, err = net.Listen("tcp", c.ProxyAddr); err != nil {
		return lns, fmt.Errorf("listen on --proxy-addr: %w", err)
	}
	udpAddr, err := net.ResolveUDPAddr("udp", c.AgentAddr)
	if err != nil {
		lns.Proxy.Close()
		return lns, fmt.Errorf("--agent-addr %q: %w", c.AgentAddr, err)
	}
	if lns.Agent, err = net.ListenUDP("udp", udpAddr); err != nil {
		lns.Proxy.Close()
		return lns, fmt.Errorf("listen on --agent-addr: %w", err)
	}
	if c.AdminAddr != "" {
		if lns.Admin, err = net.Listen("tcp", c.AdminAddr); err != nil {
			lns.Proxy.Close()
			lns.Agent.Close()
			return lns, fmt.Errorf("listen on --admin-addr: %w", err)
		}
	}
	if c.ProxyTLSAddr != "" {
		if lns.TLS, lns.H3, err = listenTCPAndUDP(c.ProxyTLSAddr); err != nil {
			lns.Proxy.Close()
			lns.Agent.Close()
			if lns.Admin != nil {
				lns.Admin.Close()
			}
			return lns, fmt.Errorf("listen on --proxy-tls-addr: %w", err)
		}
	}
	if c.PassthroughAddr != "" {
		if lns.Passthrough, err = net.Listen("tcp", c.PassthroughAddr); err != nil {
			lns.Proxy.Close()
			lns.Agent.Close()
			if lns.Admin != nil {
				lns.Admin.Close()
			}
			if lns.TLS != nil {
				lns.TLS.Close()
				lns.H3.Close()
			}
			return lns, fmt.Errorf("listen on --passthrough-addr: %w", err)
		}
	}
	return lns, nil
}

// openPorts lists the listeners of lns (and the gossip address, which the
// edge opens later) that are not on a loopback address, as
// "[host]:port/protocols (name)" joined with ", "; "" when none is.
func openPorts(lns edge.Listeners, gossip string) string {
	var out []string
	add := func(name, addr, protos string) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return
		}
		ip, err := netip.ParseAddr(host)
		if host == "localhost" || err == nil && ip.IsLoopback() {
			return
		}
		if host == "" || err == nil && ip.IsUnspecified() {
			host = "" // every interface
		}
		out = append(out, fmt.Sprintf("%s/%s (%s)", net.JoinHostPort(host, port), protos, name))
	}
	add("proxy", lns.Proxy.Addr().String(), "tcp")
	if lns.TLS != nil {
		add("https and HTTP/3", lns.TLS.Addr().String(), "tcp+udp")
	}
	if lns.Passthrough != nil {
		add("TLS passthrough", lns.Passthrough.Addr().String(), "tcp")
	}
	agent := "udp"
	if lns.AgentTCP != nil {
		agent = "udp+tcp"
	}
	add("agents", lns.Agent.LocalAddr().String(), agent)
	if lns.Admin != nil {
		add("admin", lns.Admin.Addr().String(), "tcp")
	}
	if gossip != "" {
		add("gossip", gossip, "tcp+udp")
	}
	return strings.Join(out, ", ")
}

// listenAgentTCP listens on TCP at the agent port's address, for agent
// links over the TCP transport.
func listenAgentTCP(agent net.PacketConn) (net.Listener, error) {
	ln, err := net.Listen("tcp", agent.LocalAddr().String())
	if err != nil {
		return nil, fmt.Errorf("listen on TCP at the agent port: %w", err)
	}
	return ln, nil
}

// listenTCPAndUDP listens on addr with TCP and then on the same port with
// UDP (HTTP/3 lives on the port number of HTTPS). With port 0 the kernel
// picks a free TCP port whose UDP twin may be taken: then it tries again
// with another, up to 20 times.
func listenTCPAndUDP(addr string) (net.Listener, *net.UDPConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	for try := 1; ; try++ {
		tcp, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		udpAddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, fmt.Sprint(tcp.Addr().(*net.TCPAddr).Port)))
		if err == nil {
			var udp *net.UDPConn
			if udp, err = net.ListenUDP("udp", udpAddr); err == nil {
				return tcp, udp, nil
			}
		}
		tcp.Close()
		if port != "0" || try == 20 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("HTTP/3 on UDP: %w", err)
		}
	}
}

// printAgentHint tells the user how to connect an agent and send a request.
func (c *CLI) printAgentHint(lns edge.Listeners, caFile string) {
	agent := loopbackIfUnspecified(lns.Agent.LocalAddr().String())
	proxy := loopbackIfUnspecified(lns.Proxy.Addr().String())
	cmd := "pico-agent http ENDPOINT UPSTREAM --edge " + agent
	if caFile != "" {
		cmd += " --ca " + caFile
	}
	token, mint, curlAuth := tokenHint(&c.AuthFlags)
	fmt.Fprintf(os.Stderr, "\nConnect an agent (here: endpoint foo served by localhost:3000):\n\n"+
		"%s    %s%s\n\n"+
		"    e.g. go run ./cmd/pico-agent http foo 3000 --edge %s%s%s\n\n"+
		"Then send requests:  curl%s -H 'x-pico-endpoint: foo' http://%s/   or   curl%s http://foo.localhost:%s/\n",
		mint, cmd, token, agent, caHint(caFile), token, curlAuth, proxy, curlAuth, portOf(proxy))
	if lns.TLS != nil {
		tlsAddr := loopbackIfUnspecified(lns.TLS.Addr().String())
		cacert := ""
		if caFile != "" {
			cacert = " --cacert " + caFile
		}
		fmt.Fprintf(os.Stderr, "HTTPS, HTTP/2 and HTTP/3 (UDP) on port %s:  curl%s%s https://foo.pico.localhost:%s/\n",
			portOf(tlsAddr), cacert, curlAuth, portOf(tlsAddr))
	}
	fmt.Fprintln(os.Stderr)
}

func caHint(caFile string) string {
	if caFile == "" {
		return ""
	}
	return " --ca " + caFile
}

// publicURLs is --public-url, or with the development certificate the
// URLs of the front doors on this machine.
func (c *CLI) publicURLs(lns edge.Listeners) []string {
	if len(c.PublicURL) > 0 || c.TLSCert != "" {
		return c.PublicURL
	}
	urls := []string{"http://localhost:" + portOf(lns.Proxy.Addr().String())}
	if lns.TLS != nil {
		urls = append(urls, "https://pico.localhost:"+portOf(lns.TLS.Addr().String())) // the certificate covers *.pico.localhost
	}
	return urls
}

// closeListeners closes what listen opened, when the node does not start.
func closeListeners(lns edge.Listeners) {
	for _, ln := range []net.Listener{lns.Proxy, lns.Admin, lns.TLS} {
		if ln != nil {
			ln.Close()
		}
	}
	for _, pc := range []net.PacketConn{lns.Agent, lns.H3} {
		if pc != nil {
			pc.Close()
		}
	}
}

func loopbackIfUnspecified(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// loadResetKey reads the QUIC stateless reset key, creating it (0600) on
// first start: with the same key after a restart, the node resets the
// connections of its previous life and agents reconnect at once.
func loadResetKey(path string) (*quic.StatelessResetKey, error) {
	var key quic.StatelessResetKey
	b, err := os.ReadFile(path)
	switch {
	case err == nil && len(b) == len(key):
		copy(key[:], b)
		return &key, nil
	case err == nil:
		return nil, fmt.Errorf("QUIC reset key %s has %d bytes, want %d (delete it to make a new one)", path, len(b), len(key))
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read QUIC reset key: %w", err)
	}
	rand.Read(key[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := os.WriteFile(path, key[:], 0o600); err != nil {
		return nil, fmt.Errorf("write QUIC reset key: %w", err)
	}
	return &key, nil
}

// defaultVars gives the flags their defaults (the ${...} in their tags)
// from edge.DefaultConfig, the one source of them.
func defaultVars() kong.Vars {
	d, dc := edge.DefaultConfig(), cluster.DefaultConfig()
	num := strconv.Itoa
	return kong.Vars{
		"version":                   cli.VersionLine("pico-edge"),
		"data_dir":                  cli.DataDir(),
		"acme_directory":            certs.LetsEncrypt,
		"acme_renew_before":         duration(certs.DefaultACMERenewBefore),
		"default_gossip_addr":       defaultGossipAddr,
		"read_header_timeout":       duration(d.ReadHeaderTimeout),
		"idle_timeout":              duration(d.IdleTimeout),
		"max_header_bytes":          num(d.MaxHeaderBytes),
		"response_header_timeout":   duration(d.ResponseHeaderTimeout),
		"stream_idle_timeout":       duration(d.StreamIdleTimeout),
		"tcp_idle_timeout":          duration(d.TCPIdleTimeout),
		"open_stream_timeout":       duration(d.OpenStreamTimeout),
		"max_endpoints_per_agent":   num(d.MaxEndpointsPerAgent),
		"max_streams_per_agent":     num(d.MaxStreamsPerAgent),
		"max_conns_per_token":       num(d.MaxConnsPerToken),
		"max_inflight_per_endpoint": num(d.MaxInflightPerEndpoint),
		"max_conns_per_endpoint":    num(d.MaxConnsPerEndpoint),
		"registrations_per_second":  num(d.RegistrationsPerSecond),
		"handshakes_per_second":     num(d.HandshakesPerSecond),
		"max_conns_per_listener":    num(d.MaxConnsPerListener),
		"max_conns":                 num(d.MaxConns),
		"new_conns_per_ip":          num(d.NewConnsPerIPPerSecond),
		"grace_period":              duration(d.ShutdownGrace),
		"access_log_sample":         strconv.FormatFloat(d.AccessLogSample, 'g', -1, 64),
		"cluster_label":             dc.Label,
		"rejoin_interval":           duration(dc.RejoinInterval),
		"rebalance_interval":        duration(dc.RebalanceInterval),
		"rebalance_backoff":         duration(dc.RebalanceBackoff),
		"rebalance_backoff_max":     duration(60 * dc.RebalanceBackoff),
	}
}

// duration writes d as a person would: 5m, not 5m0s.
func duration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
