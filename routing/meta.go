package routing

import (
	"encoding/binary"
	"fmt"
)

// NodeMeta is what membership carries about a node (memberlist node
// metadata, at most 512 bytes): small, slowly changing facts.
type NodeMeta struct {
	Epoch     uint64 // the node's incarnation: its start time in ns
	RelayAddr string // host:port of its QUIC listener for peers and agents
	Draining  bool   // the node is shutting down: route elsewhere when possible
}

const (
	metaFormat       = 1
	metaFlagDraining = 1
	maxRelayAddrLen  = 255
)

// AppendMeta encodes m: format 1 | flags | epoch uvarint | relay string.
func AppendMeta(b []byte, m NodeMeta) []byte {
	var flags byte
	if m.Draining {
		flags |= metaFlagDraining
	}
	b = append(b, metaFormat, flags)
	b = binary.AppendUvarint(b, m.Epoch)
	return appendStr(b, m.RelayAddr)
}

// ParseMeta decodes metadata made by AppendMeta.
func ParseMeta(b []byte) (NodeMeta, error) {
	d := gdec{b: b}
	var m NodeMeta
	if f := d.byte(); d.err == nil && f != metaFormat {
		d.fail("node metadata format %d, want %d", f, metaFormat)
	}
	flags := d.byte()
	if flags&^metaFlagDraining != 0 {
		d.fail("unknown flags %#x", flags)
	}
	m.Draining = flags&metaFlagDraining != 0
	m.Epoch = d.uvarint()
	m.RelayAddr = d.str(maxRelayAddrLen)
	if d.err == nil && m.Epoch == 0 {
		d.fail("epoch 0")
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return NodeMeta{}, fmt.Errorf("node metadata: %w", d.err)
	}
	return m, nil
}
