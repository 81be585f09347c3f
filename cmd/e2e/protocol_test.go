package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/quicutil"
)

// dialEdge opens a raw QUIC connection to the edge's agent port, as an
// agent would, over e's transport (QUIC when over set none), and closes it
// in cleanup.
func dialEdge(t testing.TB, e *edgeProc) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	conn, err := dialAgentPort(ctx, t, e)
	if err != nil {
		t.Fatalf("dial edge: %v", err)
	}
	return conn
}

// dialAgentPort is dialEdge that returns the error. Over TCP it sends the
// transport's upgrade to the agent port (the plain front door when the
// agent port takes no TCP), and runs QUIC on the upgraded connection.
func dialAgentPort(ctx context.Context, t testing.TB, e *edgeProc) (*quic.Conn, error) {
	t.Helper()
	pool, err := certs.LoadPool(e.ca)
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ := strings.Cut(e.agent, ":")
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: host,
		NextProtos: []string{quicutil.ALPNAgent},
	}
	if e.tr != overTCP {
		conn, err := quic.DialAddr(ctx, e.agent, tlsConf, quicutil.AgentConfig())
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { conn.CloseWithError(quicutil.ConnCodeNormal, "") })
		return conn, nil
	}
	u := e.agentEdge(overTCP)
	if !strings.Contains(u, "://") {
		u = "http://" + u + quicutil.AgentPath
	}
	var d net.Dialer
	tc, err := d.DialContext(ctx, "tcp", strings.TrimSuffix(strings.TrimPrefix(u, "http://"), quicutil.AgentPath))
	if err != nil {
		return nil, err
	}
	pc, err := quicutil.Upgrade(ctx, tc, u, nil)
	if err != nil {
		tc.Close()
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, pc.RemoteAddr(), tlsConf, quicutil.TCPConfig(quicutil.AgentConfig()))
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, err
	}
	t.Cleanup(func() {
		conn.CloseWithError(quicutil.ConnCodeNormal, "")
		tr.Close()
		pc.Close()
	})
	return conn, nil
}

// writeStream opens a stream on conn and writes b on it.
func writeStream(t testing.TB, conn *quic.Conn, b []byte) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if _, err := str.Write(b); err != nil {
		t.Fatalf("write stream: %v", err)
	}
	return str
}

func helloFrame(t testing.TB) []byte {
	t.Helper()
	b := (&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil)
	b, err := quicutil.AppendMessage(b, &quicutil.Hello{Agent: "e2e-test", AgentID: "e2e-raw"})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMalformedStreams talks to the edge with quic-go directly: a broken
// control stream closes that connection with a protocol error saying why;
// a broken data stream on a good connection gets a StatusBadHeader answer
// and the connection lives on; and throughout, the edge keeps serving.
func TestMalformedStreams(t *testing.T) {
	e2e(t)
	forEachTransport(t, testMalformedStreams)
}

func testMalformedStreams(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	e.serve(t, "http", "ok", "127.0.0.1:"+serveHTTP(t, nameServer("still here")))
	c := newClient(t, 30*time.Second)
	checkServing := func(t *testing.T) {
		t.Helper()
		resp, body := e.request(t, c, "GET", "ok", "/", nil)
		if resp.StatusCode != http.StatusOK || body != "still here" {
			t.Fatalf("normal request: %d %q, want 200 \"still here\"", resp.StatusCode, body)
		}
	}
	checkServing(t)

	t.Run("control stream", func(t *testing.T) {
		tcpHeader := (&quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: "ok"}).Append(nil)
		for name, tc := range map[string]struct {
			frames  func(t testing.TB) [][]byte // written on the first stream, in turn
			welcome bool                        // read a Welcome after the first frame
			wantMsg []string
		}{
			"garbage header": {
				frames:  func(testing.TB) [][]byte { return [][]byte{[]byte("GET / HTTP/1.1\r\nHost: edge\r\n\r\n")} },
				wantMsg: []string{"bad stream header", "version"},
			},
			"header version 9": {
				frames:  func(testing.TB) [][]byte { return [][]byte{{9, 0, 3, 0, 0, 0}} },
				wantMsg: []string{"bad stream header", "version 9"},
			},
			"first stream not control": {
				frames:  func(testing.TB) [][]byte { return [][]byte{tcpHeader} },
				wantMsg: []string{"first stream is tcp, want control"},
			},
			"unknown message type": {
				frames: func(testing.TB) [][]byte {
					return [][]byte{append((&quicutil.StreamHeader{Kind: quicutil.KindControl}).Append(nil), 99, 0)}
				},
				wantMsg: []string{"bad control message", "unknown message type 99"},
			},
			"garbage after welcome": {
				frames:  func(t testing.TB) [][]byte { return [][]byte{helloFrame(t), {99, 0}} },
				welcome: true,
				wantMsg: []string{"bad control message", "unknown message type 99"},
			},
		} {
			t.Run(name, func(t *testing.T) {
				conn := dialEdge(t, e)
				frames := tc.frames(t)
				str := writeStream(t, conn, frames[0])
				if tc.welcome {
					str.SetReadDeadline(time.Now().Add(waitTimeout))
					m, err := quicutil.ReadMessage(bufio.NewReader(str))
					if _, ok := m.(*quicutil.Welcome); !ok || err != nil {
						t.Fatalf("answer to hello: %T %v, want a Welcome", m, err)
					}
				}
				for _, f := range frames[1:] {
					if _, err := str.Write(f); err != nil {
						t.Fatalf("write: %v", err)
					}
				}
				select {
				case <-conn.Context().Done():
				case <-time.After(waitTimeout):
					t.Fatal("edge did not close the connection")
				}
				var appErr *quic.ApplicationError
				cause := context.Cause(conn.Context())
				if !errors.As(cause, &appErr) || !appErr.Remote || appErr.ErrorCode != quicutil.ConnCodeProtocolError {
					t.Fatalf("connection ended with %v, want the edge's application error %d (protocol error)", cause, quicutil.ConnCodeProtocolError)
				}
				for _, s := range tc.wantMsg {
					if !strings.Contains(appErr.ErrorMessage, s) {
						t.Errorf("close reason %q, want it to say %q", appErr.ErrorMessage, s)
					}
				}
			})
		}
	})
	checkServing(t)

	t.Run("data stream", func(t *testing.T) {
		conn := dialEdge(t, e)
		ctrl := writeStream(t, conn, helloFrame(t))
		ctrl.SetReadDeadline(time.Now().Add(waitTimeout))
		if m, err := quicutil.ReadMessage(bufio.NewReader(ctrl)); err != nil {
			t.Fatalf("answer to hello: %v", err)
		} else if w, ok := m.(*quicutil.Welcome); !ok || w.NodeID == "" {
			t.Fatalf("answer to hello: %#v, want a Welcome with the node ID", m)
		}
		ctrl.SetReadDeadline(time.Time{})
		for name, tc := range map[string]struct {
			stream   []byte
			finish   bool // send FIN after stream
			wantCode quicutil.Status
			wantMsg  string
		}{
			"version 9": {
				stream: []byte{9, 0, 3, 2, 0, 0}, wantCode: quicutil.StatusBadHeader, wantMsg: "version 9",
			},
			"truncated header": {
				stream: []byte{1, 0, 40, 2, 0}, finish: true, wantCode: quicutil.StatusBadHeader, wantMsg: "stream header",
			},
			"http stream from an agent": {
				stream:   (&quicutil.StreamHeader{Kind: quicutil.KindHTTP, Endpoint: "ok"}).Append(nil),
				wantCode: quicutil.StatusBadHeader, wantMsg: "only tcp streams",
			},
			"unknown endpoint": {
				stream:   (&quicutil.StreamHeader{Kind: quicutil.KindTCP, Endpoint: "nope"}).Append(nil),
				wantCode: quicutil.StatusNoRoute, wantMsg: `no upstream for endpoint "nope"`,
			},
		} {
			t.Run(name, func(t *testing.T) {
				str := writeStream(t, conn, tc.stream)
				defer str.CancelRead(quicutil.StreamCodeCanceled)
				if tc.finish {
					str.Close()
				}
				str.SetReadDeadline(time.Now().Add(waitTimeout))
				err := quicutil.ReadAnswer(str)
				var se *quicutil.StatusError
				switch {
				case !errors.As(err, &se):
					t.Fatalf("answer: %v, want status %q", err, tc.wantCode)
				case se.Code != tc.wantCode || !strings.Contains(se.Message, tc.wantMsg):
					t.Fatalf("answer: %q %q, want %q mentioning %q", se.Code, se.Message, tc.wantCode, tc.wantMsg)
				}
				str.CancelWrite(quicutil.StreamCodeCanceled)
				if err := conn.Context().Err(); err != nil {
					t.Fatalf("connection closed after a bad stream: %v", context.Cause(conn.Context()))
				}
			})
		}
	})

	checkServing(t)
	if e.hasExited() {
		t.Fatalf("edge exited: %s", e.exitStatus())
	}
	h, err := e.admc.Get("http://" + e.admin + "/healthz")
	if err != nil {
		t.Fatalf("/healthz: %v", err)
	}
	h.Body.Close()
	if h.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: status %d, want 200", h.StatusCode)
	}
}

// TestBadCA starts an agent that trusts another CA than the one that
// signed the edge's certificate: it logs a certificate error, keeps
// retrying, and never registers.
func TestBadCA(t *testing.T) {
	e2e(t)
	forEachTransport(t, testBadCA)
}

func testBadCA(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	other, err := certs.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(ca, other.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	a := e.startAgentCA(t, ca, "--log-level", "debug", "http", "foo", closedPort(t))
	certErr := func(l string) bool {
		return (isMsg("cannot connect to edge; retrying with backoff")(l) || isMsg("still cannot connect to edge")(l)) &&
			strings.Contains(l, "certificate")
	}
	line := a.waitLine(t, 0, "a certificate error", certErr)
	t.Logf("agent: %s", line)
	// Each further failed attempt is a chance for a wrong registration.
	for i := range 3 {
		a.waitLine(t, a.mark(), "another failed attempt", certErr)
		if s := e.agents(t); len(s.Agents) != 0 {
			t.Fatalf("after failed attempt %d: /status/agents lists %+v, want none", i+2, s.Agents)
		}
		if n := e.endpointAgents(t, "foo"); n != 0 {
			t.Fatalf("endpoint foo has %d agents, want none", n)
		}
	}
	for _, l := range a.output() {
		if strings.Contains(l, "is registered") {
			t.Fatalf("agent registered with an untrusted edge: %s", l)
		}
	}
}

// TestInvalidEndpointID checks that pico-agent refuses an invalid endpoint
// ID before connecting, exiting non-zero with a message naming it.
func TestInvalidEndpointID(t *testing.T) {
	e2e(t)
	for name, args := range map[string][]string{
		"http":    {"http", "BAD_ID", "3000"},
		"tcp":     {"tcp", "BAD_ID", "3000"},
		"forward": {"forward", "127.0.0.1:0", "BAD_ID"},
		"second":  {"http", "good", "3000", "BAD_ID", "3001"},
	} {
		t.Run(name, func(t *testing.T) {
			out, code := runCmd(t, nil, bin.agent, append([]string{"--edge", "127.0.0.1:1", "--log-format", "json"}, args...)...)
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			if !strings.Contains(out, "BAD_ID") {
				t.Fatalf("output does not name the invalid ID BAD_ID:\n%s", out)
			}
		})
	}
}

// TestEndpointConflict checks that pico-agent exits 1 with the edge's
// reason when the edge refuses its endpoint: here one served already with
// the other protocol.
func TestEndpointConflict(t *testing.T) {
	e2e(t)
	forEachTransport(t, testEndpointConflict)
}

func testEndpointConflict(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)
	e.serve(t, "tcp", "taken", "127.0.0.1:"+closedPort(t))
	a := e.startAgent(t, "http", "taken", closedPort(t))
	st := a.waitExit(t, waitTimeout)
	out := strings.Join(a.output(), "\n")
	if st.ExitCode() != 1 {
		t.Fatalf("agent ended with %s, want exit code 1; output:\n%s", st, out)
	}
	if !strings.Contains(out, `"taken"`) || !strings.Contains(out, "tcp") {
		t.Fatalf("output does not give the edge's reason (endpoint \"taken\" served as tcp):\n%s", out)
	}
	if n := e.endpointAgents(t, "taken"); n != 1 {
		t.Fatalf("endpoint taken has %d agents, want the first one only", n)
	}
}

// TestHelp checks that --help of both commands exits 0 and documents the
// key flags.
func TestHelp(t *testing.T) {
	e2e(t)
	for name, tc := range map[string]struct {
		bin  string
		want []string
	}{
		"pico-edge":  {bin.edge, []string{"--proxy-addr", "--agent-addr", "--admin-addr", "--data-dir", "--tls-cert", "--tls-key", "--grace-period", "--drain-delay", "--gossip-addr", "--join", "--cluster-secret-file", "--advertise-addr", "--max-header-bytes"}},
		"pico-agent": {bin.agent, []string{"--edge", "--ca", "--token", "http", "tcp", "forward"}},
	} {
		t.Run(name, func(t *testing.T) {
			out, code := runCmd(t, nil, tc.bin, "--help")
			if code != 0 {
				t.Fatalf("exit code %d, want 0; output:\n%s", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("--help does not mention %s:\n%s", w, out)
				}
			}
		})
	}
}
