package quicutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Control stream limits.
const (
	MaxControlFrameLen  = 64 << 10 // body bytes of one control frame
	MaxEndpointsPerMsg  = 1000
	maxControlString    = 8 << 10
	maxRegisterTokenLen = 8 << 10
)

// Control message types.
const (
	msgHello      = 1
	msgWelcome    = 2
	msgRegister   = 3
	msgDeregister = 4
	msgResult     = 5
	msgGoAway     = 6
	msgPeerHello  = 7
	msgPeerReady  = 8
	msgRefresh    = 9
)

// Message is a control-stream message.
type Message interface {
	msgType() uint8
	appendBody(b []byte) []byte
	parseBody(d *decoder)
}

// Hello is the agent's first control message.
//
//	token  string  bearer token (empty when the edge has no auth)
//	agent  string  software name and version, informational
//	id     string  agent instance ID, stable for the life of the process
type Hello struct {
	Token   string
	Agent   string
	AgentID string
}

// Welcome is the edge's answer to Hello. A refused Hello is answered by
// closing the connection with an ApplicationErrorCode and a reason.
//
//	node     string  the edge node's ID
//	version  string  software version, informational
//	n        uvarint then n × (node string | addr string): other nodes of
//	                 the cluster an agent may also connect to (at most
//	                 MaxPeerHints), for agents that keep several links
type Welcome struct {
	NodeID  string
	Version string
	Peers   []NodeAddr
}

// NodeAddr is an edge node's agent address ("host:port").
type NodeAddr struct {
	NodeID string
	Addr   string
}

// MaxPeerHints bounds Welcome.Peers.
const MaxPeerHints = 64

// Endpoint is one endpoint in a Register message.
type Endpoint struct {
	ID   string
	Kind Kind
}

// Register asks the edge to route endpoints to this agent.
//
//	seq  uvarint  echoed in the Result
//	n    uvarint  then n × (kind uint8 | id string)
type Register struct {
	Seq       uint64
	Endpoints []Endpoint
}

// Deregister withdraws endpoints.
//
//	seq  uvarint  echoed in the Result
//	n    uvarint  then n × id string
type Deregister struct {
	Seq uint64
	IDs []string
}

// MaxResultMessage bounds EndpointResult.Message.
const MaxResultMessage = 1024

// EndpointResult is the outcome for one endpoint of a Register or
// Deregister. The message of a refusal says why; that of a Register's ok
// for an HTTP endpoint lists the URLs at which clients reach it,
// separated by spaces (empty when the edge has none to tell; an agent
// that does not know this field ignores it).
type EndpointResult struct {
	ID      string
	Code    Status
	Message string
}

// Err returns nil for StatusOK and a *StatusError otherwise.
func (r EndpointResult) Err() error {
	if r.Code == StatusOK {
		return nil
	}
	return &StatusError{Code: r.Code, Message: r.Message}
}

// Result answers Register and Deregister, one entry per endpoint, in order.
//
//	seq  uvarint
//	n    uvarint  then n × (id string | code uint8 | message string)
type Result struct {
	Seq     uint64
	Results []EndpointResult
}

// Refresh replaces the token of a live agent connection (the agent's
// token file changed, or its token nears expiry). The edge verifies the
// new token and answers with a Result of the same seq:
//
//   - token refused: exactly one entry, with an empty ID, StatusUnauthorized
//     and the reason; the connection keeps its previous token (and ends
//     when that one expires);
//   - token accepted: one entry per endpoint the connection serves,
//     StatusOK if the new token still allows it, StatusForbidden if not
//     (the edge withdrew it); the connection now ends when the new token
//     expires.
//
// Wire format:
//
//	seq    uvarint  echoed in the Result
//	token  string
type Refresh struct {
	Seq   uint64
	Token string
}

// GoAway asks the agent to connect to another node and then close this
// connection; the edge keeps serving streams meanwhile (make before break).
//
//	reason  string
type GoAway struct {
	Reason string
}

// PeerHello opens a node-to-node relay connection (ALPN pico-peer/1): the
// dialling node names itself and proves it holds the cluster secret.
//
//	node   string  the dialling node's ID
//	proof  string  MAC of this TLS connection's exporter under the secret
type PeerHello struct {
	NodeID string
	Proof  []byte
}

// PeerReady accepts a PeerHello: the accepting node proves the secret too,
// with another label. A refused PeerHello closes the connection.
//
//	node   string
//	proof  string
type PeerReady struct {
	NodeID string
	Proof  []byte
}

// MaxProofLen bounds PeerHello.Proof and PeerReady.Proof.
const MaxProofLen = 64

func (*PeerHello) msgType() uint8 { return msgPeerHello }
func (*PeerReady) msgType() uint8 { return msgPeerReady }

func (m *PeerHello) appendBody(b []byte) []byte {
	b = appendString(b, m.NodeID)
	return appendString(b, string(m.Proof))
}

func (m *PeerHello) parseBody(d *decoder) {
	m.NodeID = d.string(256)
	m.Proof = []byte(d.string(MaxProofLen))
}

func (m *PeerReady) appendBody(b []byte) []byte {
	b = appendString(b, m.NodeID)
	return appendString(b, string(m.Proof))
}

func (m *PeerReady) parseBody(d *decoder) {
	m.NodeID = d.string(256)
	m.Proof = []byte(d.string(MaxProofLen))
}

func (*Hello) msgType() uint8      { return msgHello }
func (*Welcome) msgType() uint8    { return msgWelcome }
func (*Register) msgType() uint8   { return msgRegister }
func (*Deregister) msgType() uint8 { return msgDeregister }
func (*Result) msgType() uint8     { return msgResult }
func (*GoAway) msgType() uint8     { return msgGoAway }
func (*Refresh) msgType() uint8    { return msgRefresh }

func (m *Refresh) appendBody(b []byte) []byte {
	b = binary.AppendUvarint(b, m.Seq)
	return appendString(b, m.Token)
}

func (m *Refresh) parseBody(d *decoder) {
	m.Seq = d.uvarint()
	m.Token = d.string(maxRegisterTokenLen)
}

func (m *Hello) appendBody(b []byte) []byte {
	b = appendString(b, m.Token)
	b = appendString(b, m.Agent)
	return appendString(b, m.AgentID)
}

func (m *Hello) parseBody(d *decoder) {
	m.Token = d.string(maxRegisterTokenLen)
	m.Agent = d.string(256)
	m.AgentID = d.string(256)
}

func (m *Welcome) appendBody(b []byte) []byte {
	b = appendString(b, m.NodeID)
	b = appendString(b, m.Version)
	peers := m.Peers[:min(len(m.Peers), MaxPeerHints)]
	b = binary.AppendUvarint(b, uint64(len(peers)))
	for _, p := range peers {
		b = appendString(b, p.NodeID)
		b = appendString(b, p.Addr)
	}
	return b
}

func (m *Welcome) parseBody(d *decoder) {
	m.NodeID = d.string(256)
	m.Version = d.string(256)
	n := d.count(MaxPeerHints)
	if n > 0 {
		m.Peers = make([]NodeAddr, 0, n)
	}
	for range n {
		m.Peers = append(m.Peers, NodeAddr{NodeID: d.string(256), Addr: d.string(256)})
	}
}

func (m *Register) appendBody(b []byte) []byte {
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, uint64(len(m.Endpoints)))
	for _, e := range m.Endpoints {
		b = append(b, byte(e.Kind))
		b = appendString(b, e.ID)
	}
	return b
}

func (m *Register) parseBody(d *decoder) {
	m.Seq = d.uvarint()
	n := d.count(MaxEndpointsPerMsg)
	m.Endpoints = make([]Endpoint, 0, n)
	for range n {
		k := Kind(d.byte())
		m.Endpoints = append(m.Endpoints, Endpoint{Kind: k, ID: d.string(MaxEndpointLen)})
	}
}

func (m *Deregister) appendBody(b []byte) []byte {
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, uint64(len(m.IDs)))
	for _, id := range m.IDs {
		b = appendString(b, id)
	}
	return b
}

func (m *Deregister) parseBody(d *decoder) {
	m.Seq = d.uvarint()
	n := d.count(MaxEndpointsPerMsg)
	m.IDs = make([]string, 0, n)
	for range n {
		m.IDs = append(m.IDs, d.string(MaxEndpointLen))
	}
}

func (m *Result) appendBody(b []byte) []byte {
	b = binary.AppendUvarint(b, m.Seq)
	b = binary.AppendUvarint(b, uint64(len(m.Results)))
	for _, r := range m.Results {
		b = appendString(b, r.ID)
		b = append(b, byte(r.Code))
		b = appendString(b, r.Message)
	}
	return b
}

// Fit shortens the messages of m, if need be, so that its frame stays
// within MaxControlFrameLen: a Result answers a Register of up to
// MaxEndpointsPerMsg endpoints, and messages of up to MaxResultMessage
// bytes each would not fit. The ok results' messages go first (they are
// informational: an endpoint's public URLs), from the last; then refusals'
// messages are cut to a short prefix, and at last dropped. IDs and codes
// are never touched.
func (m *Result) Fit() {
	size := len(m.appendBody(nil))
	over := func() bool { return size > MaxControlFrameLen }
	setMsg := func(r *EndpointResult, msg string) {
		size += len(msg) + uvarintLen(len(msg)) - len(r.Message) - uvarintLen(len(r.Message))
		r.Message = msg
	}
	for i := len(m.Results) - 1; i >= 0 && over(); i-- {
		if r := &m.Results[i]; r.Code == StatusOK {
			setMsg(r, "")
		}
	}
	const short = 64
	for i := len(m.Results) - 1; i >= 0 && over(); i-- {
		if r := &m.Results[i]; len(r.Message) > short {
			setMsg(r, strings.ToValidUTF8(r.Message[:short], ""))
		}
	}
	for i := len(m.Results) - 1; i >= 0 && over(); i-- {
		setMsg(&m.Results[i], "")
	}
}

func uvarintLen(n int) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], uint64(n))
}

func (m *Result) parseBody(d *decoder) {
	m.Seq = d.uvarint()
	n := d.count(MaxEndpointsPerMsg)
	m.Results = make([]EndpointResult, 0, n)
	for range n {
		var r EndpointResult
		r.ID = d.string(MaxEndpointLen)
		r.Code = Status(d.byte())
		r.Message = d.string(MaxResultMessage)
		m.Results = append(m.Results, r)
	}
}

func (m *GoAway) appendBody(b []byte) []byte { return appendString(b, m.Reason) }
func (m *GoAway) parseBody(d *decoder)       { m.Reason = d.string(1024) }

// ControlError says why a control frame was rejected.
type ControlError struct{ Reason string }

func (e *ControlError) Error() string { return "quicutil: bad control message: " + e.Reason }

// AppendMessage encodes m as one control frame after b.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	body := m.appendBody(nil)
	if len(body) > MaxControlFrameLen {
		return b, &ControlError{Reason: fmt.Sprintf("body of %d bytes (max %d)", len(body), MaxControlFrameLen)}
	}
	b = append(b, m.msgType())
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// WriteMessage writes m as one control frame in a single Write.
func WriteMessage(w io.Writer, m Message) error {
	b, err := AppendMessage(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func newMessage(typ uint8) Message {
	switch typ {
	case msgHello:
		return new(Hello)
	case msgWelcome:
		return new(Welcome)
	case msgRegister:
		return new(Register)
	case msgDeregister:
		return new(Deregister)
	case msgResult:
		return new(Result)
	case msgGoAway:
		return new(GoAway)
	case msgPeerHello:
		return new(PeerHello)
	case msgPeerReady:
		return new(PeerReady)
	case msgRefresh:
		return new(Refresh)
	}
	return nil
}

// ParseMessage decodes one control frame from the start of b and returns the
// number of bytes it used; io.ErrUnexpectedEOF when b holds only part of it.
func ParseMessage(b []byte) (Message, int, error) {
	if len(b) < 1 {
		return nil, 0, io.ErrUnexpectedEOF
	}
	l, n := binary.Uvarint(b[1:])
	if n == 0 {
		return nil, 0, io.ErrUnexpectedEOF
	}
	if n < 0 || l > MaxControlFrameLen {
		return nil, 0, &ControlError{Reason: "frame too long"}
	}
	if uint64(len(b)-1-n) < l {
		return nil, 0, io.ErrUnexpectedEOF
	}
	end := 1 + n + int(l)
	m, err := parseBody(b[0], b[1+n:end])
	if err != nil {
		return nil, 0, err
	}
	return m, end, nil
}

// MessageReader is what ReadMessage reads from: a *bufio.Reader, or the
// reader of NewUnbufferedReader.
type MessageReader interface {
	io.Reader
	io.ByteReader
}

// NewUnbufferedReader returns a MessageReader that reads r a byte at a time
// for a frame's type and length and straight into the frame's body, without
// a buffer: the reader for a control stream that stays idle most of its
// life, where a bufio.Reader would hold its buffer on every link. It never
// reads beyond the frame it is asked for.
func NewUnbufferedReader(r io.Reader) MessageReader { return &unbufferedReader{r: r} }

type unbufferedReader struct {
	r io.Reader
	b [1]byte
}

func (u *unbufferedReader) Read(p []byte) (int, error) { return u.r.Read(p) }

func (u *unbufferedReader) ReadByte() (byte, error) {
	if _, err := io.ReadFull(u.r, u.b[:]); err != nil {
		return 0, err
	}
	return u.b[0], nil
}

// ReadMessage reads one control frame from r.
func ReadMessage(r MessageReader) (Message, error) {
	typ, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	l, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read control frame: %w", err)
	}
	if l > MaxControlFrameLen {
		return nil, &ControlError{Reason: fmt.Sprintf("frame of %d bytes (max %d)", l, MaxControlFrameLen)}
	}
	body := make([]byte, l)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the type and length were read
		}
		return nil, fmt.Errorf("read control frame: %w", err)
	}
	return parseBody(typ, body)
}

func parseBody(typ uint8, body []byte) (Message, error) {
	m := newMessage(typ)
	if m == nil {
		return nil, &ControlError{Reason: fmt.Sprintf("unknown message type %d", typ)}
	}
	d := decoder{b: body}
	m.parseBody(&d)
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads fields until the first error, which it keeps.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = &ControlError{Reason: fmt.Sprintf(format, args...)}
	}
	d.b = nil
}

func (d *decoder) byte() uint8 {
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a list length and checks it against max and the bytes left
// (every element takes at least one byte), so a hostile length cannot make
// the decoder allocate.
func (d *decoder) count(max int) int {
	n := d.uvarint()
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("list of %d elements", n)
		return 0
	}
	return int(n)
}

func (d *decoder) string(max int) string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("string of %d bytes (max %d, %d left)", n, max, len(d.b))
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
