package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/pico-edge/pico/edge/internal/quiet"
	"github.com/pico-edge/pico/quicutil"
	"github.com/pico-edge/pico/routing"
)

// Config makes a node a member of a cluster: nodes gossip which
// endpoints their agents serve (hashicorp/memberlist), and relay requests
// to each other over QUIC (ALPN pico-peer/1).
type Config struct {
	// Secret is the cluster's shared key (16, 24 or 32 bytes): it encrypts
	// and authenticates gossip, and peers prove it before they may relay.
	Secret []byte
	// Label keeps clusters apart: gossip of another label is dropped; if
	// empty, "pico".
	Label string
	// GossipAddr is the TCP and UDP address memberlist binds ("host:port";
	// port 0 picks one).
	GossipAddr string
	// AdvertiseAddr is the address other nodes reach this one at, host or
	// host:port (NAT, Kubernetes); if empty, the bind address, or a private
	// IP of the machine when the bind address is unspecified.
	AdvertiseAddr string
	// RelayAddr is the address other nodes and agents reach this node's
	// QUIC listener at; if empty, the advertised host with the listener's
	// port.
	RelayAddr string
	// Join lists nodes to join (host:port or DNS names, the port defaulting
	// to the gossip port); they are resolved again until joined, and every
	// RejoinInterval after, so that a partition heals and new pods behind a
	// headless service are found.
	Join []string
	// RejoinInterval: see Join; if zero, 10s.
	RejoinInterval time.Duration
	// RebalanceInterval is how often the node compares its agent links
	// with the other nodes' and asks the excess to move; if zero, 5s;
	// negative: never.
	RebalanceInterval time.Duration
	// RebalanceBackoff is how long the node stops asking an agent to move
	// after a move that did not take: the agent's new link came back to
	// this node (it can reach no other). It doubles with each such move in
	// a row, up to 60 times itself; if zero or negative, 1m (so at most an
	// hour).
	RebalanceBackoff time.Duration
	// Memberlist, if set, adjusts memberlist's configuration (tests use
	// faster timers).
	Memberlist func(*memberlist.Config)
}

// DefaultConfig returns the values a node uses for the fields of Config
// left zero (WithDefaults); pico-edge's flags take them too.
func DefaultConfig() Config {
	return Config{
		Label:             "pico",
		RejoinInterval:    10 * time.Second,
		RebalanceInterval: 5 * time.Second,
		RebalanceBackoff:  time.Minute,
	}
}

// WithDefaults fills the fields left zero from DefaultConfig.
func (c Config) WithDefaults() Config {
	d := DefaultConfig()
	if c.Label == "" {
		c.Label = d.Label
	}
	if c.RejoinInterval == 0 {
		c.RejoinInterval = d.RejoinInterval
	}
	if c.RebalanceInterval == 0 {
		c.RebalanceInterval = d.RebalanceInterval
	}
	if c.RebalanceBackoff <= 0 {
		c.RebalanceBackoff = d.RebalanceBackoff
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch len(c.Secret) {
	case 16, 24, 32:
	default:
		return fmt.Errorf("cluster secret of %d bytes; want 16, 24 or 32", len(c.Secret))
	}
	if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
		return fmt.Errorf("gossip address %q: %v", c.GossipAddr, err)
	}
	return nil
}

// Cluster is a node's membership of its cluster: memberlist, the ownership
// gossip (what each node's agents serve), relay connections to the other
// members, rebalancing of agent links, and the drain's part of it. Make it
// with Start; Leave ends it.
type Cluster struct {
	h      Host
	cfg    Config
	log    *slog.Logger
	ml     *memberlist.Memberlist
	local  *routing.Local
	remote *routing.Cluster
	epoch  uint64
	relay  string // this node's relay address
	gossip string // this node's gossip address, as advertised

	mu         sync.Mutex        // guards the fields below
	members    map[string]member // other live members, as memberlist told
	peers      map[string]*Peer
	senders    map[string]*sender
	draining   bool
	meta       []byte
	left       bool
	lastChange time.Time // of membership
	startedAt  time.Time
	joinedAt   time.Time // first successful join; zero before

	stop chan struct{} // closed by leave
	// ctx ends with stop: it cancels peers' dials.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // senders, the join loop, the rebalance loop, predials and confirmGone

	moves moveMemory // used by the rebalance loop only
}

// Start joins the cluster of cfg as h's node and starts its loops. The
// cluster's context carries ctx's values but not its end: when the node's
// Run context ends the node drains, and the relay must go on meanwhile
// (other nodes relay to agents here until they moved); Leave ends it.
func Start(ctx context.Context, cfg Config, h Host) (*Cluster, error) {
	cfg = cfg.WithDefaults()
	agentAddr := h.AgentAddr
	c := &Cluster{
		h:         h,
		cfg:       cfg,
		log:       h.Log.With("component", "cluster"),
		local:     h.Local,
		remote:    routing.NewCluster(h.Table),
		epoch:     h.Epoch,
		peers:     make(map[string]*Peer),
		members:   make(map[string]member),
		startedAt: time.Now(),
		senders:   make(map[string]*sender),
		stop:      make(chan struct{}),
		moves:     newMoveMemory(cfg.RebalanceBackoff),
	}
	c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	mc := memberlist.DefaultLANConfig()
	mc.Name = h.NodeID
	host, port, _ := net.SplitHostPort(cfg.GossipAddr)
	mc.BindAddr = host
	if mc.BindAddr == "" {
		mc.BindAddr = "0.0.0.0"
	}
	mc.BindPort, _ = strconv.Atoi(port)
	mc.AdvertisePort = mc.BindPort
	if a := cfg.AdvertiseAddr; a != "" {
		h, p, err := net.SplitHostPort(a)
		if err != nil {
			h, p = a, ""
		}
		mc.AdvertiseAddr = h
		if p != "" {
			mc.AdvertisePort, _ = strconv.Atoi(p)
		}
	}
	mc.SecretKey = cfg.Secret
	mc.Label = cfg.Label
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.PushPullInterval = 15 * time.Second
	mc.DeadNodeReclaimTime = 10 * time.Second
	mc.Delegate = c
	mc.Events = c
	mc.Logger = log.New(newMemberlistLog(c.log, h.Metrics.Set), "", 0)
	if cfg.Memberlist != nil {
		cfg.Memberlist(mc)
	}
	c.relay = cfg.RelayAddr
	c.meta = c.encodeMeta(agentAddr, mc)
	ml, err := memberlist.Create(mc)
	if err != nil && mc.AdvertiseAddr == "" && strings.Contains(err.Error(), "no private IP") {
		c.log.Warn("no private IP address to advertise to other nodes; using 127.0.0.1 (set --advertise-addr)")
		mc.AdvertiseAddr = "127.0.0.1"
		c.meta = c.encodeMeta(agentAddr, mc)
		ml, err = memberlist.Create(mc)
	}
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.GossipAddr, err)
	}
	c.ml = ml
	// memberlist hands out its own node by pointer and changes it in
	// UpdateNode: read it once, now, before any update.
	self := ml.LocalNode()
	selfIP := self.Addr.String()
	c.gossip = net.JoinHostPort(selfIP, strconv.Itoa(int(self.Port)))
	if c.relay == "" {
		// The advertised host with the QUIC listener's port.
		_, p, _ := net.SplitHostPort(agentAddr.String())
		c.relay = net.JoinHostPort(selfIP, p)
		c.mu.Lock()
		c.meta = routing.AppendMeta(nil, routing.NodeMeta{Epoch: c.epoch, RelayAddr: c.relay})
		c.mu.Unlock()
		if err := ml.UpdateNode(time.Second); err != nil {
			c.log.Debug("update node metadata", "err", err)
		}
	}
	c.log.Info("cluster member started", "node_id", h.NodeID, "gossip_addr", c.gossip,
		"relay_addr", c.relay, "label", cfg.Label)
	c.wg.Go(c.joinLoop)
	c.wg.Go(c.rebalanceLoop)
	return c, nil
}

func (c *Cluster) encodeMeta(agentAddr net.Addr, mc *memberlist.Config) []byte {
	relay := c.relay
	if relay == "" {
		// A provisional address until memberlist knows its own.
		host := mc.AdvertiseAddr
		if host == "" && mc.BindAddr != "0.0.0.0" {
			host = mc.BindAddr
		}
		_, p, _ := net.SplitHostPort(agentAddr.String())
		if host != "" {
			relay = net.JoinHostPort(host, p)
			c.relay = relay
		}
	}
	return routing.AppendMeta(nil, routing.NodeMeta{Epoch: c.epoch, RelayAddr: relay})
}

// joinLoop joins the configured nodes until one answers, then checks every
// RejoinInterval that each of them is a live member and joins those that
// are not (a healed partition, a restarted node, a new pod).
func (c *Cluster) joinLoop() {
	if len(c.cfg.Join) == 0 {
		return
	}
	joined := false
	wait := 200 * time.Millisecond
	lastWarn := ""
	for {
		missing := c.missingJoinAddrs()
		if len(missing) > 0 {
			n, err := c.ml.Join(missing)
			switch {
			case n > 0 && !joined:
				c.log.Info("joined cluster", "contacted", n, "members", c.ml.NumMembers())
				joined = true
				c.mu.Lock()
				c.joinedAt = time.Now()
				c.mu.Unlock()
			case err != nil && !joined && err.Error() != lastWarn:
				c.log.Warn("cannot join cluster yet; retrying", "join", c.cfg.Join, "err", err)
				lastWarn = err.Error()
			case err != nil && !joined:
				c.log.Debug("still cannot join cluster", "join", c.cfg.Join, "err", err)
			case err != nil:
				c.log.Debug("rejoin", "addrs", missing, "err", err)
			}
		} else if !joined {
			joined = true // every join address is a member already
			c.mu.Lock()
			c.joinedAt = time.Now()
			c.mu.Unlock()
		}
		if joined {
			wait = c.cfg.RejoinInterval
		} else {
			wait = min(2*wait, 5*time.Second)
		}
		select {
		case <-c.stop:
			return
		case <-time.After(wait):
		}
	}
}

// missingJoinAddrs resolves the join list and leaves out the addresses of
// live members (and this node's).
func (c *Cluster) missingJoinAddrs() []string {
	live := map[string]bool{c.gossip: true}
	c.mu.Lock()
	for name, m := range c.members {
		if p := c.peers[name]; p == nil || !p.doubted.Load() {
			live[m.gossip] = true // a doubted node is joined again
		}
	}
	c.mu.Unlock()
	_, defPort, _ := net.SplitHostPort(c.gossip)
	var out []string
	for _, j := range c.cfg.Join {
		host, port, err := net.SplitHostPort(j)
		if err != nil {
			host, port = j, defPort
		}
		ips, err := net.DefaultResolver.LookupHost(context.Background(), host)
		if err != nil {
			out = append(out, net.JoinHostPort(host, port)) // memberlist says why
			continue
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip, port)
			if !live[a] {
				out = append(out, a)
			}
		}
	}
	return out
}

// Readiness of a node that joins a cluster: it waits for the join and for
// every member's ownership state, so that a load balancer does not send it
// requests it would answer "no upstream" for. It waits no longer than
// readyAfterJoin after the join, and readyAnyway after start (the nodes to
// join may all be down: then this node serves its own agents).
const (
	readyAfterJoin = 3 * time.Second
	readyAnyway    = 10 * time.Second
)

// Ready reports whether the node may take traffic as far as the cluster
// goes: it joined and learned who serves what (or waited long enough).
func (c *Cluster) Ready() bool {
	if len(c.cfg.Join) == 0 {
		return true
	}
	c.mu.Lock()
	joinedAt, startedAt := c.joinedAt, c.startedAt
	names := make([]string, 0, len(c.members))
	for name := range c.members {
		names = append(names, name)
	}
	c.mu.Unlock()
	switch {
	case time.Since(startedAt) > readyAnyway:
		return true
	case joinedAt.IsZero():
		return false
	case time.Since(joinedAt) > readyAfterJoin:
		return true
	}
	routed := make(map[string]bool)
	for _, n := range c.remote.Nodes() {
		routed[n.Node] = n.Alive
	}
	for _, name := range names {
		if !routed[name] {
			return false
		}
	}
	return true
}

// SetDraining tells the cluster this node is shutting down: others route
// elsewhere when they can.
func (c *Cluster) SetDraining() {
	c.mu.Lock()
	c.draining = true
	c.meta = routing.AppendMeta(nil, routing.NodeMeta{Epoch: c.epoch, RelayAddr: c.relay, Draining: true})
	c.mu.Unlock()
	if err := c.ml.UpdateNode(time.Second); err != nil {
		c.log.Debug("announce draining", "err", err)
	}
}

// Leave tells the other nodes this one is gone (waiting up to timeout for
// that to spread), and stops gossip, relay connections and rebalancing. It
// is safe more than once.
func (c *Cluster) Leave(timeout time.Duration) {
	c.mu.Lock()
	if c.left {
		c.mu.Unlock()
		return
	}
	c.left = true
	close(c.stop)
	c.cancel()
	c.mu.Unlock()
	if timeout > 0 {
		if err := c.ml.Leave(timeout); err != nil {
			c.log.Debug("leave cluster", "err", err)
		}
	}
	c.ml.Shutdown()
	c.wg.Wait()
	c.mu.Lock()
	peers := make([]*Peer, 0, len(c.peers))
	for _, p := range c.peers {
		peers = append(peers, p)
	}
	c.mu.Unlock()
	for _, p := range peers {
		p.close()
	}
	c.log.Info("left cluster")
}

// NodeMeta implements memberlist.Delegate.
func (c *Cluster) NodeMeta(limit int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.meta)
}

// NotifyMsg implements memberlist.Delegate: ownership deltas and requests
// for the full state, sent to this node (SendReliable). It must not block.
func (c *Cluster) NotifyMsg(b []byte) {
	m, err := routing.ParseMessage(b)
	if err != nil {
		c.h.Metrics.GossipErrors.Inc()
		c.log.Warn("gossip message dropped", "err", err)
		return
	}
	if m.State != nil {
		c.apply(m.State)
		return
	}
	c.mu.Lock()
	snd := c.senders[m.SyncWant]
	c.mu.Unlock()
	if snd != nil {
		snd.resync()
	}
}

func (c *Cluster) apply(st *routing.State) {
	if st.Node == c.h.NodeID {
		return
	}
	c.h.Metrics.GossipStates.Inc()
	wantSync, err := c.remote.Apply(st)
	if err != nil {
		c.h.Metrics.GossipErrors.Inc()
		c.log.Warn("gossip state dropped", "node", st.Node, "err", err)
		return
	}
	if wantSync {
		c.askFullState(st.Node)
	}
}

func (c *Cluster) askFullState(node string) {
	c.mu.Lock()
	snd := c.senders[node]
	c.mu.Unlock()
	if snd != nil {
		snd.wantFullState()
	}
}

// GetBroadcasts implements memberlist.Delegate: ownership travels in
// direct messages, not in memberlist's gossip broadcasts.
func (c *Cluster) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate: this node's full state, for
// push/pull (anti-entropy every PushPullInterval, and on join).
func (c *Cluster) LocalState(join bool) []byte { return routing.AppendState(nil, c.local.Full()) }

// MergeRemoteState implements memberlist.Delegate.
func (c *Cluster) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 {
		return
	}
	c.NotifyMsg(buf)
}

// NotifyJoin implements memberlist.EventDelegate. memberlist holds its
// locks: no call back into it from here.
func (c *Cluster) NotifyJoin(n *memberlist.Node) { c.nodeUp(n, "joined") }

// NotifyUpdate implements memberlist.EventDelegate.
func (c *Cluster) NotifyUpdate(n *memberlist.Node) { c.nodeUp(n, "updated") }

func (c *Cluster) nodeUp(n *memberlist.Node, what string) {
	if n.Name == c.h.NodeID {
		return
	}
	meta, err := routing.ParseMeta(n.Meta)
	if err != nil {
		c.log.Warn("member with bad metadata ignored", "node", n.Name, "err", err)
		return
	}
	addr := memberlist.Address{Addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), Name: n.Name}
	c.mu.Lock()
	if c.left {
		c.mu.Unlock()
		return
	}
	p := c.peers[n.Name]
	if p == nil || p.epoch != meta.Epoch {
		if p != nil {
			c.wg.Go(p.close) // the node restarted: its old connection is useless
		}
		p = newPeer(c, n.Name, meta.Epoch)
		c.peers[n.Name] = p
		if meta.RelayAddr != "" && !meta.Draining {
			// Dial now, not on the first relayed request: that request
			// would wait for the handshake, and the connection is also
			// this node's own check that the peer is alive (NotifyLeave).
			c.wg.Go(func() { p.predial() })
		}
	}
	p.doubted.Store(false) // membership sees it alive
	drains := p.update(meta.RelayAddr, meta.Draining)
	c.members[n.Name] = member{gossip: addr.Addr, meta: meta, state: n.State}
	c.lastChange = time.Now()
	snd := c.senders[n.Name]
	if snd == nil || snd.epoch != meta.Epoch {
		if snd != nil {
			snd.stop()
		}
		snd = newSender(c, n.Name, meta.Epoch)
		c.senders[n.Name] = snd
		c.wg.Go(snd.run)
	}
	snd.setAddr(addr)
	c.mu.Unlock()
	if drains {
		c.h.PeerDraining(p)
	}
	if c.remote.Alive(n.Name, meta.Epoch, p.target) {
		snd.wantFullState()
	}
	c.h.MembersChanged()
	c.log.Info("cluster member "+what, "node", n.Name, "addr", addr.Addr, "relay_addr", meta.RelayAddr, "draining", meta.Draining)
}

// NotifyLeave implements memberlist.EventDelegate: the node left or is
// declared dead. memberlist declares a node dead when it misses probes for
// a few hundred milliseconds (FastGossip) to a few seconds: a node starved
// of CPU, alive and serving, gets declared dead too, and comes back as soon
// as it refutes. So while this node's relay connection to it is still
// open, the verdict is doubted: the node's routes stay, tried after other
// owners, and its streams in flight go on. It is gone once the connection
// closes (closed by the node when it leaves, or by watch after
// PeerDeadAfter of silence), unless membership sees it alive again first.
func (c *Cluster) NotifyLeave(n *memberlist.Node) {
	if n.Name == c.h.NodeID {
		return
	}
	c.mu.Lock()
	p := c.peers[n.Name]
	if p != nil && !c.left && p.answering() {
		if !p.doubted.Swap(true) {
			c.wg.Go(func() { c.confirmGone(n.Name, p) })
		}
		c.mu.Unlock()
		c.log.Warn("membership lost a node whose relay connection is open; keeping its routes until it closes",
			"node", n.Name)
		return
	}
	c.mu.Unlock()
	c.gone(n.Name, nil, "membership")
}

// confirmGone waits until the relay connection to the doubted peer p of
// node closes, then drops it, unless membership saw it alive again
// meanwhile.
func (c *Cluster) confirmGone(node string, p *Peer) {
	t := time.NewTicker(quicutil.PeerKeepAlive)
	defer t.Stop()
	for p.doubted.Load() && p.answering() {
		p.mu.Lock()
		conn := p.conn
		p.mu.Unlock()
		if conn == nil {
			break
		}
		select {
		case <-c.stop:
			return
		case <-conn.Context().Done():
		case <-t.C:
		}
	}
	c.gone(node, p, "relay connection")
}

// gone drops node: its routes, its relay connection and its sender. With
// p set, only if p is still its peer and still doubted (confirmGone).
func (c *Cluster) gone(node string, p *Peer, by string) {
	c.mu.Lock()
	if c.left || p != nil && (c.peers[node] != p || !p.doubted.Load()) {
		c.mu.Unlock()
		return // leave closes every peer
	}
	// Under c.mu, so that nodeUp cannot bring the node back in between.
	c.remote.Gone(node)
	p = c.peers[node]
	delete(c.peers, node)
	delete(c.members, node)
	c.lastChange = time.Now()
	snd := c.senders[node]
	delete(c.senders, node)
	if p != nil {
		c.wg.Go(p.close) // under c.mu: leave, which waits for c.wg, has not begun
	}
	c.mu.Unlock()
	if snd != nil {
		snd.stop()
	}
	c.h.MembersChanged()
	c.log.Info("cluster member gone", "node", node, "confirmed_by", by)
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// forgetAcked drops the tombstones every peer has been sent.
func (c *Cluster) forgetAcked() {
	c.mu.Lock()
	acked := uint64(1<<64 - 1)
	for _, snd := range c.senders {
		acked = min(acked, snd.acked.Load())
	}
	c.mu.Unlock()
	if acked != 1<<64-1 {
		c.local.Forget(acked)
	}
}

// PeerHints lists other live, not draining nodes' relay addresses, for
// agents that keep links to several nodes.
func (c *Cluster) PeerHints() []quicutil.NodeAddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]quicutil.NodeAddr, 0, len(c.peers))
	for name, p := range c.peers {
		addr, draining := p.state()
		if addr != "" && !draining {
			out = append(out, quicutil.NodeAddr{NodeID: name, Addr: addr})
		}
	}
	slices.SortFunc(out, func(a, b quicutil.NodeAddr) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out[:min(len(out), quicutil.MaxPeerHints)]
}

// member is a copy of what memberlist said of another node.
type member struct {
	gossip string
	meta   routing.NodeMeta
	state  memberlist.NodeStateType
}

// OthersToMoveTo reports whether another live node that is not draining
// is in the cluster: somewhere this node's agents can move to.
func (c *Cluster) OthersToMoveTo() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if !m.meta.Draining {
			return true
		}
	}
	return false
}

// memberList returns the other live members, by name.
func (c *Cluster) memberList() map[string]member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]member, len(c.members))
	for k, v := range c.members {
		out[k] = v
	}
	return out
}

// memberlistLog passes memberlist's log lines ("[WARN] memberlist: ...")
// to slog at their level. What memberlist reports of a packet or stream it
// dropped as bad input (another cluster's label, undecryptable, malformed:
// from a node with another secret, a scanner, anyone who can reach the
// gossip port) is counted in pico_gossip_dropped_total{reason} and logged
// through a quietLog per reason, not once per packet.
type memberlistLog struct {
	log     *slog.Logger
	dropped map[string]*gossipDrop // by reason
}

type gossipDrop struct {
	count *metrics.Counter
	log   *quiet.Log
}

// gossipDropReasons classify memberlist's lines about bad input: the first
// reason whose substrings one of them contains.
var gossipDropReasons = []struct {
	reason string
	says   []string
}{
	{"label", []string{"unacceptable label", "label header"}},
	{"decrypt", []string{"decrypt", "Decrypt", "No installed keys"}},
	{"malformed", []string{"failed to receive", "Failed to receive", "Failed to decode", "invalid msgType",
		"missing message type", "not supported", "invalid checksum", "Failed to decompress"}},
}

func newMemberlistLog(log *slog.Logger, set *metrics.Set) memberlistLog {
	w := memberlistLog{log: log, dropped: make(map[string]*gossipDrop)}
	for _, r := range gossipDropReasons {
		w.dropped[r.reason] = &gossipDrop{
			count: set.GetOrCreateCounter(`pico_gossip_dropped_total{reason="` + r.reason + `"}`),
			log:   quiet.New(log, slog.LevelWarn, "memberlist: dropped gossip that is not this cluster's ("+r.reason+")"),
		}
	}
	return w
}

func (w memberlistLog) Write(p []byte) (int, error) {
	msg := strings.TrimRight(string(p), "\n")
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError, "[ERROR]": slog.LevelError} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			level, msg = l, strings.TrimSpace(rest)
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	if level >= slog.LevelWarn {
		for _, r := range gossipDropReasons {
			for _, s := range r.says {
				if strings.Contains(msg, s) {
					d := w.dropped[r.reason]
					d.count.Inc()
					d.log.Log("last", msg)
					return len(p), nil
				}
			}
		}
	}
	// memberlist reports a failed probe or refused join as errors; they are
	// routine while a node restarts, and say nothing an operator must act on.
	if level == slog.LevelError && (strings.Contains(msg, "Failed to send") || strings.Contains(msg, "Failed fallback ping")) {
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, "memberlist: "+msg)
	return len(p), nil
}

var _ io.Writer = memberlistLog{}
var _ memberlist.Delegate = (*Cluster)(nil)
var _ memberlist.EventDelegate = (*Cluster)(nil)

// Gossip is the node's gossip address, as advertised.
func (c *Cluster) Gossip() string { return c.gossip }

// NumMembers is the number of live members, this node included.
func (c *Cluster) NumMembers() int { return c.ml.NumMembers() }
