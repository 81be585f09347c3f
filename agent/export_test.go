package agent

// NodesChanged returns a channel that is closed at the next change of the
// agent's live links, so tests wait on Nodes without polling.
func (a *Agent) NodesChanged() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// PendingRequests counts the control requests waiting for their Result on
// the agent's live links.
func (a *Agent) PendingRequests() int {
	a.mu.Lock()
	links := append([]*link(nil), a.links...)
	a.mu.Unlock()
	n := 0
	for _, l := range links {
		l.mu.Lock()
		n += len(l.pending)
		l.mu.Unlock()
	}
	return n
}
