package agent

// NodesChanged returns a channel that is closed at the next change of the
// agent's live links, so tests wait on Nodes without polling.
func (a *Agent) NodesChanged() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}
