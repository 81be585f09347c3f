package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pico-edge/pico/edge/admin"
)

// StatusCmd prints what a node's admin API says about its endpoints,
// agents or cluster members, as tables.
type StatusCmd struct {
	Admin   string        `help:"URL of the node's admin API (its --admin-addr); the admin port must be reachable from here." default:"http://127.0.0.1:8002" env:"PICO_ADMIN" placeholder:"URL"`
	JSON    bool          `name:"json" help:"Print the admin API's JSON as it came, instead of a table."`
	Timeout time.Duration `help:"Time to wait for the admin API's answer." default:"10s"`

	Endpoints struct{} `cmd:"" help:"Endpoints: protocol, this node's agents, the other nodes that serve them, streams in flight (GET /status/endpoints)."`
	Agents    struct{} `cmd:"" help:"Agent links to this node: session, agent ID, agent software and version, endpoints, address, transport (quic or tcp), age, RTT, streams (GET /status/agents)."`
	Members   struct{} `cmd:"" help:"Cluster members as this node sees them: state, drain, relay address and connection, endpoints, agent links (GET /status/members)."`
	Certs     struct{} `cmd:"" help:"Certificates: where they come from, and those obtained from the ACME CA with their issuer and expiry (GET /status/certs)."`
}

// run fetches /status/WHAT and prints it on out; now is the time agent
// ages are measured from.
func (s *StatusCmd) run(out io.Writer, what string, now time.Time) error {
	body, u, err := s.fetch("/status/" + what)
	if err != nil {
		return err
	}
	if s.JSON {
		if !json.Valid(body) {
			return notStatusJSON(u, errors.New("invalid JSON"))
		}
		_, err := out.Write(body)
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	switch what {
	case "endpoints":
		err = printEndpoints(out, tw, u, body)
	case "agents":
		err = printAgents(out, tw, u, body, now)
	case "members":
		err = printMembers(out, tw, u, body)
	case "certs":
		err = printCerts(out, tw, u, body, now)
	default:
		return fmt.Errorf("unknown status %q", what)
	}
	if err != nil {
		return err
	}
	return tw.Flush()
}

// fetch GETs path from the admin API and returns the body of a 200 answer
// and the URL asked.
func (s *StatusCmd) fetch(path string) ([]byte, string, error) {
	base := strings.TrimSuffix(s.Admin, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u := base + path
	tr := http.DefaultTransport.(*http.Transport).Clone() // HTTPS_PROXY and NO_PROXY apply
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: s.Timeout}
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		return nil, u, fmt.Errorf("--admin %q: %w", s.Admin, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, u, fmt.Errorf("cannot reach the admin API at %s: %w\n"+
			"Is pico-edge running there? Its admin port (--admin-addr, :8002 by default) must be reachable from here; "+
			"name it with --admin URL or PICO_ADMIN", base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, u, fmt.Errorf("GET %s: read the answer: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, u, fmt.Errorf("GET %s: %s: %s\nIs %s the admin port of pico-edge (--admin-addr), not its proxy port?",
			u, resp.Status, firstLine(body), base)
	}
	return body, u, nil
}

// unwrapURLError drops the *url.Error wrapping, which repeats the URL.
func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

// firstLine is the start of an error answer, for a message.
func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte("\n"))
	s := string(line)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		return "(empty answer)"
	}
	return s
}

func notStatusJSON(u string, err error) error {
	return fmt.Errorf("GET %s: the answer is not the admin API's JSON (%w); is the URL the admin port of pico-edge?", u, err)
}

// decode parses the JSON answered at u into v, which must name a node.
func decode(u string, body []byte, v any, nodeID *string) error {
	if err := json.Unmarshal(body, v); err != nil {
		return notStatusJSON(u, err)
	}
	if *nodeID == "" {
		return notStatusJSON(u, errors.New("no node_id"))
	}
	return nil
}

func printEndpoints(out io.Writer, tw *tabwriter.Writer, u string, body []byte) error {
	var st admin.Endpoints
	if err := decode(u, body, &st, &st.NodeID); err != nil {
		return err
	}
	fmt.Fprintf(out, "node %s: %s\n", st.NodeID, plural(len(st.Endpoints), "endpoint"))
	if len(st.Endpoints) == 0 {
		return nil
	}
	slices.SortFunc(st.Endpoints, func(a, b admin.Endpoint) int { return strings.Compare(a.ID, b.ID) })
	fmt.Fprintln(tw, "ENDPOINT\tPROTOCOL\tLOCAL AGENTS\tOTHER NODES\tIN FLIGHT")
	for _, e := range st.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", e.ID, e.Protocol, list(e.Agents), list(e.Nodes), e.InFlight)
	}
	return nil
}

func printAgents(out io.Writer, tw *tabwriter.Writer, u string, body []byte, now time.Time) error {
	var st admin.Agents
	if err := decode(u, body, &st, &st.NodeID); err != nil {
		return err
	}
	fmt.Fprintf(out, "node %s: %s (auth: %s)\n", st.NodeID, plural(len(st.Agents), "agent link"), st.Auth)
	if len(st.Agents) == 0 {
		return nil
	}
	fmt.Fprintln(tw, "SESSION\tAGENT ID\tAGENT\tENDPOINTS\tREMOTE ADDR\tTRANSPORT\tCONNECTED FOR\tRTT\tIN FLIGHT\tSTREAMS")
	for _, a := range st.Agents {
		slices.Sort(a.Endpoints)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", a.Session, orDash(a.AgentID), orDash(a.Agent), list(a.Endpoints), a.RemoteAddr,
			orDash(a.Transport), age(now.Sub(a.Connected)), millis(a.RTTMillis), a.InFlight, a.Streams)
	}
	return nil
}

func printMembers(out io.Writer, tw *tabwriter.Writer, u string, body []byte) error {
	var st admin.Members
	if err := decode(u, body, &st, &st.NodeID); err != nil {
		return err
	}
	if st.Clustered {
		fmt.Fprintf(out, "node %s: %s of its cluster\n", st.NodeID, plural(len(st.Members), "member"))
	} else {
		fmt.Fprintf(out, "node %s: not in a cluster (no --gossip-addr)\n", st.NodeID)
	}
	fmt.Fprintln(tw, "NODE\tSTATE\tDRAINING\tRELAY ADDR\tENDPOINTS\tAGENT LINKS\tROUTED\tRELAY\tRTT")
	for _, m := range st.Members {
		node, relay := m.NodeID, m.Relay
		if m.Self {
			node += " (this node)"
			relay = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", node, m.State, yesNo(m.Draining), orDash(m.RelayAddr),
			m.Endpoints, m.Links, yesNo(m.Routed), orDash(relay), millis(m.RelayRTT))
	}
	return nil
}

func printCerts(out io.Writer, tw *tabwriter.Writer, u string, body []byte, now time.Time) error {
	var st admin.Certs
	if err := decode(u, body, &st, &st.NodeID); err != nil {
		return err
	}
	switch st.Source {
	case "acme":
		fmt.Fprintf(out, "node %s: ACME certificates for *.%s (%s held); other names get the fallback certificate\n",
			st.NodeID, st.ACMEDomain, strconv.Itoa(len(st.Certificates)))
	case "files":
		fmt.Fprintf(out, "node %s: the --tls-cert certificate (no ACME)\n", st.NodeID)
	default:
		fmt.Fprintf(out, "node %s: the development certificate (no ACME)\n", st.NodeID)
	}
	if len(st.Certificates) == 0 {
		return nil
	}
	fmt.Fprintln(tw, "NAME\tISSUER\tNOT AFTER\tEXPIRES IN")
	for _, c := range st.Certificates {
		left := "expired"
		if d := c.NotAfter.Sub(now); d > 0 {
			left = roundAge(d)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, orDash(c.Issuer), c.NotAfter.UTC().Format(time.RFC3339), left)
	}
	return nil
}

// roundAge writes d in its largest unit: 89d, 5h, 12m, 30s.
func roundAge(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d >= time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	case d >= time.Minute:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	}
	return strconv.Itoa(int(d/time.Second)) + "s"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// millis formats an RTT in milliseconds; "-" when there is none.
func millis(ms float64) string {
	if ms <= 0 {
		return "-"
	}
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
}

// age formats how long an agent has been connected, to two units at most.
func age(d time.Duration) string {
	d = max(d, 0).Truncate(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
