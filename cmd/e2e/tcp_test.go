package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// startRedis runs redis-server on 127.0.0.1 without persistence and
// returns its port. It skips t when redis is not installed.
func startRedis(t testing.TB) string {
	t.Helper()
	path := needCommand(t, "redis-server", "CI installs redis-server from Debian")
	needCommand(t, "redis-cli", "CI installs redis-tools from Debian")
	for range 5 { // the port may be taken between freePort and redis' bind
		port := freePort(t)
		p := startProc(t, "redis-server", path, "--port", port, "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", t.TempDir())
		if _, ok := p.tryWaitLine(t, 0, "Ready to accept connections", startTimeout, contains("Ready to accept connections")); ok {
			return port
		}
	}
	t.Fatal("redis-server did not start in 5 attempts")
	return ""
}

// redisCLI runs redis-cli against addr and returns its trimmed output.
func redisCLI(t testing.TB, addr string, stdin io.Reader, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, code := runCmd(t, stdin, "redis-cli", append([]string{"-h", host, "-p", port}, args...)...)
	if code != 0 {
		t.Fatalf("redis-cli %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return strings.TrimSpace(out)
}

// resp encodes a command in the Redis protocol, for redis-cli --pipe.
func resp(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

// TestTCPRedis tunnels a real redis-server: `pico-agent tcp cache PORT` on
// one side, `pico-agent forward LOCAL cache` on the other, and redis-cli
// talking to LOCAL, one command at a time and pipelined.
func TestTCPRedis(t *testing.T) {
	e2e(t)
	forEachTransport(t, testTCPRedis)
}

func testTCPRedis(t *testing.T, tr transport) {
	redisPort := startRedis(t)
	e := startEdge(t).over(t, tr)
	e.serve(t, "tcp", "cache", "127.0.0.1:"+redisPort)
	_, local := e.forward(t, "cache")
	e.waitRoute(t, "cache")

	if got := redisCLI(t, local, nil, "PING"); got != "PONG" { // the README's check
		t.Fatalf("PING = %q, want PONG", got)
	}
	if got := redisCLI(t, local, nil, "SET", "k", "v"); got != "OK" {
		t.Fatalf("SET k v = %q, want OK", got)
	}
	if got := redisCLI(t, local, nil, "GET", "k"); got != "v" {
		t.Fatalf("GET k = %q, want v", got)
	}

	// 1000 INCRs and a 1 MiB value in one pipelined stream.
	const incrs = 1000
	var in strings.Builder
	for range incrs {
		in.WriteString(resp("INCR", "counter"))
	}
	in.WriteString(resp("SET", "big", strings.Repeat("x", 1<<20)))
	out := redisCLI(t, local, strings.NewReader(in.String()), "--pipe")
	if want := fmt.Sprintf("errors: 0, replies: %d", incrs+1); !strings.Contains(out, want) {
		t.Fatalf("redis-cli --pipe:\n%s\nwant %q", out, want)
	}
	if got := redisCLI(t, local, nil, "GET", "counter"); got != fmt.Sprint(incrs) {
		t.Fatalf("GET counter = %q, want %d", got, incrs)
	}
	if got := redisCLI(t, local, nil, "STRLEN", "big"); got != fmt.Sprint(1<<20) {
		t.Fatalf("STRLEN big = %q, want %d", got, 1<<20)
	}
}

// TestTCPHalfClose checks that a shutdown(SHUT_WR) crosses the tunnel as
// EOF in both directions, with Go TCP upstreams and net.Dial clients.
func TestTCPHalfClose(t *testing.T) {
	e2e(t)
	forEachTransport(t, testTCPHalfClose)
}

func testTCPHalfClose(t *testing.T, tr transport) {
	e := startEdge(t).over(t, tr)

	// echo answers everything, then closes its write side at EOF.
	echoPort := serveTCP(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
	// speaker talks first and closes its write side, then reads the
	// client's answer to EOF.
	heard := make(chan string, 1)
	speakerPort := serveTCP(t, func(c *net.TCPConn) {
		io.WriteString(c, "hello from the server")
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if err != nil {
			heard <- "error: " + err.Error()
			return
		}
		heard <- string(b)
	})
	e.serve(t, "tcp", "echo", "127.0.0.1:"+echoPort)
	e.serve(t, "tcp", "speaker", "127.0.0.1:"+speakerPort)
	_, echoAddr := e.forward(t, "echo")
	_, speakerAddr := e.forward(t, "speaker")

	dial := func(t *testing.T, addr string) *net.TCPConn {
		c, err := net.DialTimeout("tcp", addr, waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(waitTimeout))
		return c.(*net.TCPConn)
	}

	t.Run("client closes first", func(t *testing.T) {
		e.waitRoute(t, "echo")
		c := dial(t, echoAddr)
		data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		werr := make(chan error, 1)
		go func() { // write while the echo comes back, then half-close
			_, err := c.Write(data)
			if err == nil {
				err = c.CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read echo: %v (after %d bytes)", err, len(got))
		}
		if err := <-werr; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("echo: got %d bytes, want the %d sent", len(got), len(data))
		}
	})

	t.Run("server closes first", func(t *testing.T) {
		e.waitRoute(t, "speaker")
		c := dial(t, speakerAddr)
		got, err := io.ReadAll(c) // EOF once the server's FIN crossed
		if err != nil || string(got) != "hello from the server" {
			t.Fatalf("read: %q, %v; want the greeting then EOF", got, err)
		}
		// Our direction is still open.
		if _, err := io.WriteString(c, "answer from the client"); err != nil {
			t.Fatalf("write after the server's FIN: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-heard:
			if s != "answer from the client" {
				t.Fatalf("server read %q, want the client's answer", s)
			}
		case <-time.After(waitTimeout):
			t.Fatal("server did not read EOF after the client's answer")
		}
	})

	t.Run("unknown endpoint", func(t *testing.T) {
		fwd, addr := e.forward(t, "nope")
		c := dial(t, addr)
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil {
			t.Fatalf("read: %d bytes, %v; want the connection closed", n, err)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("read: %v; want the connection closed, not left open", err)
		}
		fwd.waitLine(t, 0, "forward refused", isMsg("forward refused", "err", `no upstream for endpoint "nope"`))
	})
}
