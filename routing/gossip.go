package routing

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Ownership gossip: every node announces, and only it, which endpoints its
// local agents serve. An announcement is a State: the node's name, its
// epoch (greater after every restart, so a restarted node's state replaces
// its previous life's and an old message can never bring that back), a
// version counting the node's changes, and the endpoints that changed since
// Base (a delta) or all of them (Full). Versions, not timestamps, order the
// messages of one epoch: a replayed or late message changes nothing.

// Announcement is one endpoint as one node serves it.
type Announcement struct {
	ID     EndpointID
	Proto  string // "http", "tcp" or "tls", as in Table.Add
	Kinds  uint8  // which stream kinds the node's agents speak; opaque to routing
	Agents uint32 // agent links serving it on the node; 0 withdraws it
}

// State is one node's announcement: its full state, or a delta.
type State struct {
	Node    string
	Epoch   uint64
	Base    uint64 // a delta applies to a copy at version Base or later
	Version uint64
	Full    bool
	Links   uint32 // agent links on the node, for rebalancing
	// Endpoints are every endpoint the node serves (Full), or every one
	// changed since Base with its latest state, withdrawn ones included.
	Endpoints []Announcement
}

// Limits of the gossip decoder.
const (
	MaxNodeNameLen     = 128
	MaxStateEndpoints  = 1 << 20
	maxEndpointIDLen   = 63
	gossipMagic        = 'p'
	gossipFormat       = 1
	gossipTypeState    = 1
	gossipTypeSyncWant = 2
	flagFull           = 1
)

// ErrBadGossip wraps every decoding error.
var ErrBadGossip = errors.New("routing: bad gossip message")

// AppendState encodes s after b:
//
//	'p' | format 1 | type 1 | flags (1: full) | node string | epoch uvarint |
//	base uvarint | version uvarint | links uvarint | n uvarint |
//	n × (id string | proto byte (0 http, 1 tcp, 2 tls) | kinds byte | agents uvarint)
//
// where a string is a uvarint length and the bytes.
func AppendState(b []byte, s *State) []byte {
	b = append(b, gossipMagic, gossipFormat, gossipTypeState)
	var flags byte
	if s.Full {
		flags |= flagFull
	}
	b = append(b, flags)
	b = appendStr(b, s.Node)
	b = binary.AppendUvarint(b, s.Epoch)
	b = binary.AppendUvarint(b, s.Base)
	b = binary.AppendUvarint(b, s.Version)
	b = binary.AppendUvarint(b, uint64(s.Links))
	b = binary.AppendUvarint(b, uint64(len(s.Endpoints)))
	for _, a := range s.Endpoints {
		b = appendStr(b, string(a.ID))
		b = append(b, protoByte(a.Proto), a.Kinds)
		b = binary.AppendUvarint(b, uint64(a.Agents))
	}
	return b
}

// gossipProtos are the protocols by their byte in gossip. A node older
// than "tls" refuses a state that carries it (docs/cluster.md).
var gossipProtos = [...]string{"http", "tcp", "tls"}

// protoByte is proto's byte in gossip; anything unknown is http.
func protoByte(proto string) byte {
	for i, p := range gossipProtos {
		if p == proto {
			return byte(i)
		}
	}
	return 0
}

// AppendSyncRequest encodes a request, from node, for the receiver's full
// state: the requester missed a delta or saw a new epoch.
func AppendSyncRequest(b []byte, node string) []byte {
	b = append(b, gossipMagic, gossipFormat, gossipTypeSyncWant)
	return appendStr(b, node)
}

// Message is a decoded gossip message: exactly one field is set.
type Message struct {
	State    *State
	SyncWant string // the node that wants our full state
}

// ParseMessage decodes one gossip message that fills b.
func ParseMessage(b []byte) (Message, error) {
	d := gdec{b: b}
	if d.byte() != gossipMagic || d.byte() != gossipFormat {
		return Message{}, fmt.Errorf("%w: not a Pico gossip message (format %d)", ErrBadGossip, gossipFormat)
	}
	var m Message
	switch typ := d.byte(); typ {
	case gossipTypeState:
		s := new(State)
		flags := d.byte()
		if flags&^flagFull != 0 {
			d.fail("unknown flags %#x", flags)
		}
		s.Full = flags&flagFull != 0
		s.Node = d.nodeName()
		s.Epoch = d.uvarint()
		s.Base = d.uvarint()
		s.Version = d.uvarint()
		s.Links = uint32(d.uvarintMax(1<<32 - 1))
		n := d.count(MaxStateEndpoints, 4) // id length, proto, kinds, agents
		s.Endpoints = make([]Announcement, 0, n)
		for range n {
			var a Announcement
			a.ID = EndpointID(d.endpointID())
			if p := d.byte(); int(p) < len(gossipProtos) {
				a.Proto = gossipProtos[p]
			} else {
				d.fail("unknown protocol %d", p)
			}
			a.Kinds = d.byte()
			a.Agents = uint32(d.uvarintMax(1<<32 - 1))
			if d.err != nil {
				break
			}
			s.Endpoints = append(s.Endpoints, a)
		}
		if d.err == nil && !s.Full && s.Base > s.Version {
			d.fail("delta from version %d to older version %d", s.Base, s.Version)
		}
		m.State = s
	case gossipTypeSyncWant:
		m.SyncWant = d.nodeName()
	default:
		d.fail("unknown message type %d", typ)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return Message{}, d.err
	}
	return m, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// gdec reads fields until the first error, which it keeps.
type gdec struct {
	b   []byte
	err error
}

func (d *gdec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadGossip, fmt.Sprintf(format, args...))
	}
	d.b = nil
}

func (d *gdec) byte() byte {
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *gdec) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *gdec) uvarintMax(max uint64) uint64 {
	v := d.uvarint()
	if v > max {
		d.fail("value %d out of range", v)
		return 0
	}
	return v
}

// count reads a list length and checks it against max and the bytes left
// (each element takes at least minLen bytes), so a hostile length cannot
// make the decoder allocate.
func (d *gdec) count(max, minLen int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(max) || n > uint64(len(d.b)/minLen) {
		d.fail("list of %d elements", n)
		return 0
	}
	return int(n)
}

func (d *gdec) str(max int) string {
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

func (d *gdec) nodeName() string {
	s := d.str(MaxNodeNameLen)
	if d.err == nil && s == "" {
		d.fail("empty node name")
	}
	return s
}

// endpointID reads an ID and checks it is a DNS label (a-z 0-9 -).
func (d *gdec) endpointID() string {
	s := d.str(maxEndpointIDLen)
	if d.err != nil {
		return ""
	}
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		d.fail("bad endpoint ID %q", s)
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			d.fail("bad endpoint ID %q", s)
			return ""
		}
	}
	return s
}
