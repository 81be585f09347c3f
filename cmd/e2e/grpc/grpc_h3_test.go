package grpctest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge/edgetest"
)

// TestGRPCOverHTTP3 makes gRPC calls to the edge over HTTP/3 (grpc-go has
// no HTTP/3 client; connect-go speaks the gRPC protocol over any
// http.Client, here quic-go's http3.Transport) to a grpc-go server behind
// the agent: unary with large messages, server streaming, and a
// bidirectional stream where each reply comes before the next request.
func TestGRPCOverHTTP3(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)
	if err := a.ServeHTTPUpstream(t.Context(), "grpc", agent.Upstream{Addr: startGRPC(t), HTTP2: true}); err != nil {
		t.Fatal(err)
	}
	tr := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: n.CAPool, ServerName: "grpc.pico.localhost"}}
	t.Cleanup(func() { tr.Close() })
	hc := &http.Client{Transport: rewriteHost{tr, n.TLSURL}}
	base := "https://grpc.pico.localhost:" + portOfURL(n.TLSURL) + "/grpc.testing.TestService/"
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	unary := connect.NewClient[testgrpc.SimpleRequest, testgrpc.SimpleResponse](hc, base+"UnaryCall", connect.WithGRPC())
	const big = 512 << 10
	res, err := unary.CallUnary(ctx, connect.NewRequest(&testgrpc.SimpleRequest{
		ResponseSize: big, Payload: &testgrpc.Payload{Body: bytes.Repeat([]byte{1}, big)},
	}))
	if err != nil || len(res.Msg.GetPayload().GetBody()) != big {
		t.Fatalf("unary over HTTP/3: %v", err)
	}
	_, err = unary.CallUnary(ctx, connect.NewRequest(&testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: 5, Message: "gone"}}))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound || ce.Message() != "gone" {
		t.Fatalf("error status over HTTP/3 = %v, want not_found \"gone\"", err)
	}

	server := connect.NewClient[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse](hc, base+"StreamingOutputCall", connect.WithGRPC())
	ss, err := server.CallServerStream(ctx, connect.NewRequest(&testgrpc.StreamingOutputCallRequest{ResponseParameters: params([]int32{10, 20000, 30})}))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for ss.Receive() {
		sizes = append(sizes, len(ss.Msg().GetPayload().GetBody()))
	}
	if err := ss.Err(); err != nil || len(sizes) != 3 || sizes[1] != 20000 {
		t.Fatalf("server stream over HTTP/3: sizes %v, %v", sizes, err)
	}

	bidi := connect.NewClient[testgrpc.StreamingOutputCallRequest, testgrpc.StreamingOutputCallResponse](hc, base+"FullDuplexCall", connect.WithGRPC())
	bs := bidi.CallBidiStream(ctx)
	for i, size := range []int32{7, 7000, 70} {
		if err := bs.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: params([]int32{size})}); err != nil {
			t.Fatalf("bidi send %d: %v", i, err)
		}
		r, err := bs.Receive()
		if err != nil || len(r.GetPayload().GetBody()) != int(size) {
			t.Fatalf("bidi %d over HTTP/3: %v", i, err)
		}
	}
	bs.CloseRequest()
	bs.CloseResponse()
}

// rewriteHost sends requests for the endpoint's name to the node's address.
type rewriteHost struct {
	rt  http.RoundTripper
	url string
}

func (r rewriteHost) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Host = req.URL.Host
	req.URL.Host = r.url[len("https://"):]
	return r.rt.RoundTrip(req)
}

func portOfURL(u string) string {
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] == ':' {
			return u[i+1:]
		}
	}
	return ""
}
