package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/pico-edge/pico/agent/inspect"
)

// defaultAdminAddr is --admin-addr's default: the inspector's address, as
// ngrok's. When it is taken (another pico-agent), the agent takes another
// loopback port instead of failing.
const defaultAdminAddr = "127.0.0.1:4040"

// InspectFlags configure the request inspector of pico-agent http.
type InspectFlags struct {
	Inspect          bool     `help:"Capture the HTTP exchanges of the endpoints and serve the inspector (web UI and /api/requests) on a loopback --admin-addr; --no-inspect turns it off." default:"true" negatable:""`
	InspectExchanges int      `help:"Exchanges the inspector keeps, the oldest dropped first." default:"500"`
	InspectMemory    byteSize `help:"Memory the inspector may use for the exchanges it keeps and the bytes waiting to be parsed (KiB, MiB, GiB suffixes)." default:"64MiB"`
	InspectBody      byteSize `help:"Bytes of each request and response body the inspector keeps (KiB, MiB suffixes; 0: none)." default:"64KiB"`
	InspectRedact    []string `help:"Headers whose values the inspector masks, comma separated." default:"Authorization,Cookie,Set-Cookie,X-Pico-Authorization" sep:","`
	InspectTokenFile string   `help:"File with a token (at least 16 characters) the inspector asks for; with it, the inspector is served on an --admin-addr that is not loopback too." type:"path" placeholder:"FILE"`
}

// inspectorRun is the inspector of a pico-agent http and the token it
// asks for.
type inspectorRun struct {
	in    *inspect.Inspector // nil: off
	token string
}

// newInspector returns the inspector the flags ask for; its in is nil when
// it is off.
func (f *InspectFlags) newInspector(log *slog.Logger) (inspectorRun, error) {
	if !f.Inspect {
		return inspectorRun{}, nil
	}
	var token string
	if f.InspectTokenFile != "" {
		b, err := os.ReadFile(f.InspectTokenFile)
		if err != nil {
			return inspectorRun{}, fmt.Errorf("--inspect-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if len(token) < 16 {
			return inspectorRun{}, fmt.Errorf("--inspect-token-file %s: the token has %d characters; use at least 16 (openssl rand -hex 32)", f.InspectTokenFile, len(token))
		}
	}
	body := int(f.InspectBody)
	if body == 0 {
		body = -1 // none
	}
	redact := []string{}
	for _, h := range f.InspectRedact {
		if h = strings.TrimSpace(h); h != "" {
			redact = append(redact, h)
		}
	}
	in, err := inspect.New(inspect.Config{MaxExchanges: f.InspectExchanges, MaxBytes: int64(f.InspectMemory),
		BodyBytes: body, Redact: redact, Logger: log.With("component", "inspector")})
	if err != nil {
		return inspectorRun{}, fmt.Errorf("--inspect-*: %w", err)
	}
	return inspectorRun{in: in, token: token}, nil
}

// listenAdmin listens on --admin-addr; when that is the default and it is
// taken, on another loopback port.
func (g *Globals) listenAdmin() (net.Listener, error) {
	ln, err := net.Listen("tcp", g.AdminAddr)
	if err != nil && g.AdminAddr == defaultAdminAddr && errors.Is(err, syscall.EADDRINUSE) {
		return net.Listen("tcp", "127.0.0.1:0")
	}
	return ln, err
}

// withInspector serves the inspector beside the admin API h, on a loopback
// address or with its token, and says where on out.
func (g *Globals) withInspector(h http.Handler, addr net.Addr, out io.Writer) http.Handler {
	ir := g.inspector
	if ir.in == nil {
		return h
	}
	ap, err := netip.ParseAddrPort(addr.String())
	loopback := err == nil && ap.Addr().Unmap().IsLoopback()
	switch {
	case ir.token != "":
		fmt.Fprintf(out, "inspector on http://%s/ (with its token: open /?token=TOKEN once)\n", addr)
	case !loopback:
		fmt.Fprintf(out, "inspector off: --admin-addr %s is not a loopback address (give --inspect-token-file to serve it there)\n", addr)
		return h
	default:
		fmt.Fprintf(out, "inspector on http://%s/\n", addr)
	}
	mux := http.NewServeMux()
	mux.Handle("/", ir.in.HandlerWithToken(ir.token))
	for _, p := range []string{"/healthz", "/readyz", "/status", "/metrics"} {
		mux.Handle(p, h)
	}
	return mux
}

// byteSize is a flag value in bytes: 65536, 64KiB, 64MiB, 1GiB.
type byteSize int64

func (b *byteSize) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("%q: want a size such as 65536, 64KiB or 64MiB", text)
	}
	*b = byteSize(n * mult)
	return nil
}
