package grpctest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pico-edge/pico/agent"
	"github.com/pico-edge/pico/edge/edgetest"
)

// startGRPC serves grpc-go's interop test service and its health service
// on 127.0.0.1 (HTTP/2 without TLS, as gRPC servers commonly run).
func startGRPC(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, testService{})
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

// TestGRPC runs real gRPC calls of every kind (unary with a large
// message, server, client and bidirectional streaming, metadata and
// trailers, error status) through the edge, over TLS (h2) and over h2c on
// the plain port, to an upstream the agent speaks HTTP/2 to.
func TestGRPC(t *testing.T) {
	n := edgetest.NewNode(t)
	a := n.NewAgent(t)
	if err := a.ServeHTTPUpstream(t.Context(), "grpc", agent.Upstream{Addr: startGRPC(t), HTTP2: true}); err != nil {
		t.Fatal(err)
	}
	conns := map[string]grpc.DialOption{
		"h2 over TLS": grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: n.CAPool, ServerName: "grpc.pico.localhost"})),
		"h2c":         grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	targets := map[string]string{
		"h2 over TLS": strings.TrimPrefix(n.TLSURL, "https://"),
		"h2c":         strings.TrimPrefix(n.ProxyURL, "http://"),
	}
	for name, creds := range conns {
		t.Run(name, func(t *testing.T) {
			cc, err := grpc.NewClient(targets[name], creds, grpc.WithAuthority("grpc.pico.localhost"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			exerciseGRPC(ctx, t, cc)
		})
	}
}

func exerciseGRPC(ctx context.Context, t *testing.T, cc *grpc.ClientConn) {
	tc := testgrpc.NewTestServiceClient(cc)

	// Health: unary.
	hc := healthpb.NewHealthClient(cc)
	if res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check = %v, %v; want SERVING", res, err)
	}

	// Unary with 1 MiB each way, metadata echoed in headers and trailers.
	const big = 1 << 20
	var header, trailer metadata.MD
	mctx := metadata.AppendToOutgoingContext(ctx, "x-grpc-test-echo-initial", "hello", "x-grpc-test-echo-trailing-bin", "\x01\x02")
	res, err := tc.UnaryCall(mctx, &testgrpc.SimpleRequest{
		ResponseSize: big,
		Payload:      &testgrpc.Payload{Body: bytes.Repeat([]byte{7}, big)},
	}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil || len(res.GetPayload().GetBody()) != big {
		t.Fatalf("unary: %d bytes, %v; want %d", len(res.GetPayload().GetBody()), err, big)
	}
	if got := header.Get("x-grpc-test-echo-initial"); len(got) != 1 || got[0] != "hello" {
		t.Errorf("initial metadata = %q, want [hello]", got)
	}
	if got := trailer.Get("x-grpc-test-echo-trailing-bin"); len(got) != 1 || got[0] != "\x01\x02" {
		t.Errorf("trailing metadata = %q, want the echoed binary value", got)
	}

	// An error status travels in the trailers.
	_, err = tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.InvalidArgument), Message: "bad thing"}})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || st.Message() != "bad thing" {
		t.Errorf("status = %v, want InvalidArgument \"bad thing\"", err)
	}

	// Server streaming.
	sizes := []int32{31415, 9, 2653, 58979}
	ss, err := tc.StreamingOutputCall(ctx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params(sizes)})
	if err != nil {
		t.Fatal(err)
	}
	for i, size := range sizes {
		r, err := ss.Recv()
		if err != nil || len(r.GetPayload().GetBody()) != int(size) {
			t.Fatalf("server stream %d: %d bytes, %v; want %d", i, len(r.GetPayload().GetBody()), err, size)
		}
	}
	if _, err := ss.Recv(); err != io.EOF {
		t.Fatalf("server stream end: %v, want io.EOF", err)
	}

	// Client streaming.
	cs, err := tc.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, size := range []int{27182, 8, 1828, 45904} {
		total += size
		if err := cs.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: make([]byte, size)}}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || int(r.GetAggregatedPayloadSize()) != total {
		t.Fatalf("client stream: %v, %v; want %d", r.GetAggregatedPayloadSize(), err, total)
	}

	// Bidirectional: each request is answered before the next is sent.
	bs, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, size := range sizes {
		if err := bs.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: params([]int32{size}), Payload: &testgrpc.Payload{Body: make([]byte, i+1)}}); err != nil {
			t.Fatal(err)
		}
		r, err := bs.Recv()
		if err != nil || len(r.GetPayload().GetBody()) != int(size) {
			t.Fatalf("ping-pong %d: %d bytes, %v; want %d", i, len(r.GetPayload().GetBody()), err, size)
		}
	}
	bs.CloseSend()
	if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("ping-pong end: %v, want io.EOF", err)
	}
}

func params(sizes []int32) []*testgrpc.ResponseParameters {
	out := make([]*testgrpc.ResponseParameters, len(sizes))
	for i, s := range sizes {
		out[i] = &testgrpc.ResponseParameters{Size: s}
	}
	return out
}

// testService implements the calls of grpc-go's interop TestService that
// TestGRPC makes: payloads of the sizes asked for, metadata echoed in the
// header and the trailer, and an error status on request.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
}

func echoMetadata(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-grpc-test-echo-initial"); len(v) > 0 {
		grpc.SetHeader(ctx, metadata.Pairs("x-grpc-test-echo-initial", v[0]))
	}
	if v := md.Get("x-grpc-test-echo-trailing-bin"); len(v) > 0 {
		grpc.SetTrailer(ctx, metadata.Pairs("x-grpc-test-echo-trailing-bin", v[0]))
	}
}

func (testService) UnaryCall(ctx context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	echoMetadata(ctx)
	if st := in.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
}

func (testService) StreamingOutputCall(in *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	for _, p := range in.GetResponseParameters() {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

func (testService) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	total := 0
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(in.GetPayload().GetBody())
	}
}

func (testService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range in.GetResponseParameters() {
			if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
				return err
			}
		}
	}
}
