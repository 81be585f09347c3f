package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/edge/admin"
	"github.com/pico-edge/pico/edge/auth"
	"github.com/pico-edge/pico/edge/cluster"
)

// Config configures a Server. Zero values select the documented defaults
// (docs/limits.md lists them with the reasons for each).
type Config struct {
	// NodeID names this node in logs, headers and status; if empty, a random
	// "edge-xxxxxxxx".
	NodeID string
	// Version is reported to agents and in /status; informational.
	Version string

	// GetCertificate serves the certificate of the agent listener (required).
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// ACMEChallenges, if set, answers ACME HTTP-01 challenges: it gets
	// every front-door request for /.well-known/acme-challenge/..., before
	// routing, and the HTTPS door offers TLS-ALPN-01's acme-tls/1 to
	// GetCertificate (see certs.ACME).
	ACMEChallenges http.Handler
	// Certs, if set, answers the admin port's GET /status/certs.
	Certs func() admin.Certs
	// StatelessResetKey lets a restarted node reset the QUIC connections of
	// its previous life at once, so agents reconnect without waiting for
	// their idle timeout. If nil, no stateless resets are sent.
	StatelessResetKey *quic.StatelessResetKey

	// ReadHeaderTimeout bounds reading a client's request header; if zero, 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client keep-alive connections; if zero, 60s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a client's request header; if zero, 32 KiB.
	MaxHeaderBytes int
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// header once the request is sent (504 after it); if zero, 30s.
	ResponseHeaderTimeout time.Duration
	// StreamIdleTimeout ends an HTTP stream (WebSocket, SSE, slow body) with
	// no byte either way for this long; if zero, 5m.
	StreamIdleTimeout time.Duration
	// TCPIdleTimeout ends a TCP forward with no byte either way for this
	// long; if zero, 1h.
	TCPIdleTimeout time.Duration
	// OpenStreamTimeout bounds the wait for a stream to an agent whose
	// stream limit is reached (503 after it) and for a TCP agent's answer;
	// if zero, 10s.
	OpenStreamTimeout time.Duration
	// HelloTimeout bounds the time a new agent connection has to say hello;
	// if zero, 10s.
	HelloTimeout time.Duration
	// TrustedProxies are the networks of proxies in front of the edge whose
	// X-Forwarded-* and Forwarded headers are kept and extended; from any
	// other client they are replaced. Empty: trust nobody.
	TrustedProxies []netip.Prefix
	// AllowUnderscoresInHeaders passes request header names with '_'
	// (rejected with 400 by default: proxies disagree on whether X_A is X-A).
	AllowUnderscoresInHeaders bool
	// MaxEndpointsPerAgent bounds the endpoints one agent connection may
	// serve; if zero, 100.
	MaxEndpointsPerAgent int
	// MaxStreamsPerAgent bounds the streams open from this node to one
	// agent connection (requests in flight and idle keep-alive streams);
	// beyond, 503 at once. If zero, 1,000 (what agents accept).
	MaxStreamsPerAgent int
	// MaxConnsPerToken bounds the agent connections one token may hold to
	// this node at once, when tokens are checked; if zero, 8.
	MaxConnsPerToken int
	// MaxInflightPerEndpoint bounds the requests in flight to one endpoint
	// on this node; beyond it they get 503 at once. If zero, 256.
	MaxInflightPerEndpoint int
	// MaxConnsPerEndpoint bounds the long-lived connections open to one
	// endpoint on this node: upgraded HTTP connections (WebSockets and
	// other Upgrade requests, counted from the request on) and TCP
	// connections. Beyond it they get 503 (a forward, an overloaded
	// answer) at once. They do not count against MaxInflightPerEndpoint.
	// If zero, 4,096.
	MaxConnsPerEndpoint int
	// RegistrationsPerSecond bounds the Register messages one agent
	// connection may send (burst: twice as many); if zero, 10.
	RegistrationsPerSecond int
	// HandshakesPerSecond is the rate of new QUIC connections above which
	// a client must first prove its address with a Retry, counted apart on
	// the agent port (agents, forwarders, peers) and on the HTTP/3 door;
	// if zero, 200; negative: never.
	HandshakesPerSecond int
	// MaxConnsPerListener and MaxConns bound the open client connections
	// of each TCP front door and of all of them; if zero, 10,000 and
	// 50,000.
	MaxConnsPerListener int
	MaxConns            int
	// NewConnsPerIPPerSecond bounds new client connections from one IP
	// address (burst: twice as many); beyond, plain HTTP gets 429 and TLS a
	// closed connection. TrustedProxies are exempt (many clients share
	// their address). If zero, 100; negative: no limit.
	NewConnsPerIPPerSecond int
	// AdminToken, when set, enables the admin port's operations (drain,
	// move or evict an agent, and pprof with AdminPprof) for requests that
	// present it as a bearer token; empty: the admin port is read-only.
	AdminToken string
	// AdminPprof serves /debug/pprof/ on the admin port, behind AdminToken.
	AdminPprof bool
	// ShutdownGrace bounds the wait for requests in flight when Run's
	// context ends; if zero, 30s.
	ShutdownGrace time.Duration
	// DrainDelay is how long a draining node keeps taking new client
	// connections after /readyz turned 503, for load balancers to notice;
	// zero: it stops at once.
	DrainDelay time.Duration
	// Cluster makes the node a member of a cluster; nil: a single node.
	Cluster *cluster.Config
	// Auth makes agents (and, with Auth.ProxyAuth, clients) present a
	// token; nil: no authentication, which the node warns about at start.
	Auth *auth.Config

	// PublicURLs are the base URLs at which clients reach this node's
	// front doors (https://example.com, http://localhost:8000): an agent
	// is told, for each HTTP endpoint it registers, the URLs ID.HOST
	// under each (https://foo.example.com/), and prints them. Empty: the
	// agents are told none.
	PublicURLs []string

	// Logger receives logs; if nil, logs are discarded.
	Logger *slog.Logger
	// AccessLog receives one line per request or TCP connection; if nil, Logger.
	AccessLog *slog.Logger
	// AccessLogSample is the fraction of requests with a status below 500
	// that are logged, in (0, 1]; errors are always logged. If zero, 1.
	AccessLogSample float64
	// AccessLogOff lists endpoints whose requests are never logged.
	AccessLogOff map[string]bool
	// Metrics receives the node's metrics; if nil, a private set.
	Metrics *metrics.Set
}

// DefaultConfig returns the values a node uses for the fields of Config
// left zero: the one source of those defaults, which pico-edge's flags
// take too (see cmd/pico-edge). Fields it leaves zero have no default
// value: they are off or empty, or made per node (NodeID, Logger,
// Metrics), as their comments say.
func DefaultConfig() Config {
	return Config{
		ReadHeaderTimeout:      10 * time.Second,
		IdleTimeout:            60 * time.Second,
		ResponseHeaderTimeout:  30 * time.Second,
		StreamIdleTimeout:      5 * time.Minute,
		TCPIdleTimeout:         time.Hour,
		OpenStreamTimeout:      10 * time.Second,
		HelloTimeout:           10 * time.Second,
		ShutdownGrace:          30 * time.Second,
		MaxHeaderBytes:         32 << 10,
		MaxEndpointsPerAgent:   100,
		MaxInflightPerEndpoint: 256,
		MaxConnsPerEndpoint:    4096,
		MaxConnsPerToken:       8,
		MaxStreamsPerAgent:     1000,
		RegistrationsPerSecond: 10,
		HandshakesPerSecond:    200,
		MaxConnsPerListener:    10000,
		MaxConns:               50000,
		NewConnsPerIPPerSecond: 100,
		Version:                "dev",
		AccessLogSample:        1,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	fill(&c.ReadHeaderTimeout, d.ReadHeaderTimeout)
	fill(&c.IdleTimeout, d.IdleTimeout)
	fill(&c.ResponseHeaderTimeout, d.ResponseHeaderTimeout)
	fill(&c.StreamIdleTimeout, d.StreamIdleTimeout)
	fill(&c.TCPIdleTimeout, d.TCPIdleTimeout)
	fill(&c.OpenStreamTimeout, d.OpenStreamTimeout)
	fill(&c.HelloTimeout, d.HelloTimeout)
	fill(&c.ShutdownGrace, d.ShutdownGrace)
	fill(&c.MaxHeaderBytes, d.MaxHeaderBytes)
	fill(&c.MaxEndpointsPerAgent, d.MaxEndpointsPerAgent)
	fill(&c.MaxInflightPerEndpoint, d.MaxInflightPerEndpoint)
	fill(&c.MaxConnsPerEndpoint, d.MaxConnsPerEndpoint)
	fill(&c.MaxConnsPerToken, d.MaxConnsPerToken)
	fill(&c.MaxStreamsPerAgent, d.MaxStreamsPerAgent)
	fill(&c.RegistrationsPerSecond, d.RegistrationsPerSecond)
	fill(&c.HandshakesPerSecond, d.HandshakesPerSecond)
	fill(&c.MaxConnsPerListener, d.MaxConnsPerListener)
	fill(&c.MaxConns, d.MaxConns)
	fill(&c.NewConnsPerIPPerSecond, d.NewConnsPerIPPerSecond)
	fill(&c.Version, d.Version)
	fill(&c.AccessLogSample, d.AccessLogSample)
	if c.NodeID == "" {
		c.NodeID = "edge-" + randomHex(4)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Cluster != nil {
		cc := c.Cluster.WithDefaults()
		c.Cluster = &cc
	}
	if c.Auth != nil {
		ac := c.Auth.WithDefaults()
		c.Auth = &ac
	}
	return c
}

// fill sets *v to d when it is zero.
func fill[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.GetCertificate == nil {
		return errors.New("edge: config: GetCertificate is required")
	}
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": c.ReadHeaderTimeout, "IdleTimeout": c.IdleTimeout,
		"ResponseHeaderTimeout": c.ResponseHeaderTimeout, "StreamIdleTimeout": c.StreamIdleTimeout,
		"TCPIdleTimeout": c.TCPIdleTimeout, "OpenStreamTimeout": c.OpenStreamTimeout,
		"HelloTimeout": c.HelloTimeout, "ShutdownGrace": c.ShutdownGrace, "DrainDelay": c.DrainDelay,
	} {
		if d < 0 {
			return fmt.Errorf("edge: config: %s is negative (%s)", name, d)
		}
	}
	if c.MaxHeaderBytes < 0 || c.MaxHeaderBytes > 96<<10 {
		return fmt.Errorf("edge: config: MaxHeaderBytes %d out of range (0 to 96 KiB)", c.MaxHeaderBytes)
	}
	for name, v := range map[string]int{"MaxInflightPerEndpoint": c.MaxInflightPerEndpoint, "MaxConnsPerEndpoint": c.MaxConnsPerEndpoint,
		"RegistrationsPerSecond": c.RegistrationsPerSecond, "MaxConnsPerListener": c.MaxConnsPerListener, "MaxConns": c.MaxConns} {
		if v < 0 {
			return fmt.Errorf("edge: config: %s is negative (%d)", name, v)
		}
	}
	if c.AccessLogSample < 0 || c.AccessLogSample > 1 {
		return fmt.Errorf("edge: config: AccessLogSample %g out of range (0 to 1)", c.AccessLogSample)
	}
	if c.AdminPprof && c.AdminToken == "" {
		return errors.New("edge: config: AdminPprof needs an AdminToken")
	}
	if c.MaxEndpointsPerAgent < 0 {
		return fmt.Errorf("edge: config: MaxEndpointsPerAgent is negative (%d)", c.MaxEndpointsPerAgent)
	}
	for _, u := range c.PublicURLs {
		if _, err := parsePublicURL(u); err != nil {
			return err
		}
	}
	if c.Auth != nil {
		if err := c.Auth.Validate(); err != nil {
			return fmt.Errorf("edge: config: %w", err)
		}
	}
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			return fmt.Errorf("edge: config: %w", err)
		}
	}
	return nil
}
