package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/certs"
	"github.com/pico-edge/pico/edge"
)

// A Go program serves endpoint "hello" with net/http through an edge node.
// The example starts its own edge on loopback; a real program dials yours.
func ExampleAgent_Listen() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proxyURL, agentAddr, caPool, stop := startEdge(ctx)
	defer stop()

	a, err := agent.New(agent.Config{Edges: []string{agentAddr}, RootCAs: caPool})
	if err != nil {
		panic(err)
	}
	defer a.Close()
	go a.Run(ctx)

	ln, err := a.Listen(ctx, "hello")
	if err != nil {
		panic(err) // e.g. the edge refused the endpoint, and says why
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	// A client reaches the endpoint through the edge.
	req, _ := http.NewRequest("GET", proxyURL+"/", nil)
	req.Host = "hello.localhost"
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 hello from hello.localhost
}

// startEdge runs an edge node on loopback with a fresh CA.
func startEdge(ctx context.Context) (proxyURL, agentAddr string, pool *x509.CertPool, stop func()) {
	b, err := certs.Generate()
	if err != nil {
		panic(err)
	}
	srv, err := edge.New(edge.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &b.Cert, nil },
		ShutdownGrace:  time.Second,
	})
	if err != nil {
		panic(err)
	}
	proxy, _ := net.Listen("tcp", "127.0.0.1:0")
	udp, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx, edge.Listeners{Proxy: proxy, Agent: udp})
	}()
	return "http://" + proxy.Addr().String(), udp.LocalAddr().String(), b.CAPool, func() { cancel(); <-done }
}
