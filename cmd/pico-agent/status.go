package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/pico-edge/pico/agent"
)

// statusLines prints one line for an endpoint each time where it is
// registered changes:
//
//	endpoint web (http) is registered on node-1, node-2: forwarding to localhost:3000 (http)
//	endpoint web reachable at https://web.example.com/
//	endpoint web (http) is registered on node-2 (12 streams served)
//	endpoint web (http) is not registered on any edge node: no link to the edge; reconnecting (12 streams served)
//
// The first line that says an endpoint is registered names its upstream; a
// "reachable at" line follows when the URLs the edges told change. Scripts wait for the
// words "endpoint ID (KIND) is registered".
type statusLines struct {
	w        io.Writer
	kind     string            // http or tcp, as the command says
	upstream map[string]string // by endpoint: "localhost:3000 (http)"
	last     map[string]string // by endpoint: the state of its last line
	named    map[string]bool   // endpoints whose upstream a line named
	urls     map[string]string // by endpoint: the URLs last printed
}

func newStatusLines(w io.Writer, kind string) *statusLines {
	return &statusLines{w: w, kind: kind, upstream: map[string]string{}, last: map[string]string{}, urls: map[string]string{}, named: map[string]bool{}}
}

// add starts printing lines for endpoint id, served by upstream.
func (p *statusLines) add(id, upstream string) { p.upstream[id] = upstream }

// update prints the lines of the endpoints whose state changed since the
// last call. It returns an error when an endpoint is refused by every
// edge node the agent is linked to: the agent does not ask them again, so
// it would serve nothing.
func (p *statusLines) update(st agent.Status) error {
	for _, e := range st.Endpoints {
		up, ok := p.upstream[e.ID]
		if !ok {
			continue
		}
		if e.RefusedEverywhere(len(st.Links)) {
			nodes := sortedKeys(e.Refusals)
			return fmt.Errorf("endpoint %s (%s) is refused by every edge node the agent is linked to (%s): %s",
				e.ID, p.kind, strings.Join(nodes, ", "), e.Refusals[nodes[0]])
		}
		state := p.state(e, st.Links)
		if state == "" || state == p.last[e.ID] {
			continue // a link is registering it, or nothing is new
		}
		p.last[e.ID] = state
		line := fmt.Sprintf("endpoint %s (%s) is ", e.ID, p.kind)
		if len(e.Nodes) == 0 {
			line += "not registered on any edge node: no link to the edge; reconnecting"
		} else {
			line += "registered on " + strings.Join(overTCP(e.Nodes, st.Links), ", ")
			if !p.named[e.ID] {
				p.named[e.ID] = true
				line += ": forwarding to " + up
			}
			for _, n := range sortedKeys(e.Refusals) {
				line += "; " + n + " refused it: " + e.Refusals[n]
			}
		}
		if e.Streams > 0 {
			line += fmt.Sprintf(" (%d streams served)", e.Streams)
		}
		fmt.Fprintln(p.w, line)
		if urls := strings.Join(e.URLs, ", "); urls != "" && urls != p.urls[e.ID] {
			p.urls[e.ID] = urls
			fmt.Fprintf(p.w, "endpoint %s reachable at %s\n", e.ID, urls)
		}
	}
	return nil
}

// state is what the line of e says: where it is registered and refused,
// or that the agent has no link; empty while no link has registered e and
// some link has not answered yet.
func (p *statusLines) state(e agent.EndpointStatus, linkList []agent.LinkStatus) string {
	links := len(linkList)
	switch {
	case len(e.Nodes) > 0:
		state := strings.Join(overTCP(e.Nodes, linkList), ",")
		for _, n := range sortedKeys(e.Refusals) {
			state += " -" + n + ":" + e.Refusals[n]
		}
		return state
	case links == 0:
		return "no link"
	}
	return ""
}

// watch prints lines as the agent's status changes, until ctx ends or an
// endpoint is refused everywhere.
func (p *statusLines) watch(ctx context.Context, a *agent.Agent) error {
	for {
		changed := a.StatusChanged()
		if err := p.update(a.Status()); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// overTCP returns nodes with " (over TCP)" after those whose link uses the
// TCP transport.
func overTCP(nodes []string, links []agent.LinkStatus) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n
		for _, l := range links {
			if l.NodeID == n && l.Transport == string(agent.TransportTCP) {
				out[i] += " (over TCP)"
			}
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
