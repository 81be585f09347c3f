package quicutil

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Tuning of a frame connection.
const (
	// frameQueue is how many packets wait to be written on one connection;
	// more are dropped, as a full UDP socket buffer drops them, and QUIC's
	// congestion control slows down.
	frameQueue = 1024
	// writeBuffer is the write buffer: under load one TCP write carries
	// many packets (it is flushed when no more are queued).
	writeBuffer = 64 << 10
	// frameWriteTimeout bounds one flush: a peer that stops reading for
	// that long has lost the link anyway (QUIC's idle timeout is shorter).
	frameWriteTimeout = 10 * time.Second
	// closeFlushTimeout bounds the sending of the close frame.
	closeFlushTimeout = 100 * time.Millisecond
)

// TCPPacketSize is the QUIC packet size over the TCP transport: the largest
// quic-go sends. Path MTU discovery is off (TCP carries any size).
const TCPPacketSize = 1452

// packetPool holds buffers of MaxFramePayload bytes.
var packetPool = sync.Pool{New: func() any { b := make([]byte, MaxFramePayload); return &b }}

// frameConn carries datagrams in WebSocket binary frames on one byte
// stream. One goroutine reads (readPacket); writes are queued to a writer
// goroutine that Close stops and waits for.
type frameConn struct {
	conn   net.Conn
	br     *bufio.Reader
	client bool // masks what it sends, refuses masked frames

	queue   chan *[]byte // packets to write (each of its own length)
	control chan []byte  // control frames to write (pong, close), ahead of packets
	done    chan struct{}
	wg      sync.WaitGroup

	readErr   error // sticky: set by the reader only
	closeOnce sync.Once
	closeSent atomic.Bool
	dropped   atomic.Uint64
}

func newFrameConn(conn net.Conn, br *bufio.Reader, client bool) *frameConn {
	if br == nil {
		br = bufio.NewReaderSize(conn, writeBuffer)
	}
	c := &frameConn{
		conn:    conn,
		br:      br,
		client:  client,
		queue:   make(chan *[]byte, frameQueue),
		control: make(chan []byte, 4),
		done:    make(chan struct{}),
	}
	c.wg.Go(c.writeLoop)
	return c
}

// writePacket queues a copy of p. It drops p when the queue is full.
func (c *frameConn) writePacket(p []byte) (int, error) {
	if len(p) > MaxFramePayload {
		return 0, fmt.Errorf("quicutil: packet of %d bytes (at most %d)", len(p), MaxFramePayload)
	}
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	bp := packetPool.Get().(*[]byte)
	*bp = append((*bp)[:0], p...)
	select {
	case c.queue <- bp:
	default:
		packetPool.Put(bp)
		c.dropped.Add(1)
	}
	return len(p), nil
}

func (c *frameConn) writeLoop() {
	bw := bufio.NewWriterSize(c.conn, writeBuffer)
	hdr := make([]byte, 0, maxFrameHeader)
	// Mask keys (client only) come from a ChaCha8 stream seeded from
	// crypto/rand: unpredictable, as RFC 6455 section 5.3 wants, without a
	// system call per frame.
	var seed [32]byte
	rand.Read(seed[:])
	keys := mrand.NewChaCha8(seed)
	write := func(op byte, p []byte) error {
		h := frameHeader{fin: true, op: op, length: uint64(len(p)), masked: c.client}
		if c.client {
			binary.LittleEndian.PutUint32(h.key[:], uint32(keys.Uint64()))
			maskBytes(h.key, p)
		}
		hdr = appendFrameHeader(hdr[:0], h)
		bw.Write(hdr)
		_, err := bw.Write(p)
		return err
	}
	flush := func() error {
		c.conn.SetWriteDeadline(time.Now().Add(frameWriteTimeout))
		return bw.Flush()
	}
	for {
		var err error
		select {
		case <-c.done:
			// Closing: send the close frame (and any pong) for a moment.
			for more := true; more; {
				select {
				case p := <-c.control:
					write(p[0], p[1:])
				default:
					more = false
				}
			}
			c.conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
			bw.Flush()
			return
		case p := <-c.control:
			err = write(p[0], p[1:])
		case bp := <-c.queue:
			err = write(opBinary, *bp)
			packetPool.Put(bp)
		}
		for more := true; more && err == nil; {
			select {
			case p := <-c.control:
				err = write(p[0], p[1:])
			case bp := <-c.queue:
				err = write(opBinary, *bp)
				packetPool.Put(bp)
			default:
				more = false
			}
		}
		if err == nil {
			err = flush()
		}
		if err != nil {
			c.conn.Close() // the reader sees it
			return
		}
	}
}

// sendControl queues a control frame; it gives up when the queue is full
// (a peer sending pings faster than it reads pongs).
func (c *frameConn) sendControl(op byte, payload []byte) {
	f := append([]byte{op}, payload...)
	select {
	case c.control <- f:
	default:
	}
}

// sendClose queues a close frame with code and reason, once.
func (c *frameConn) sendClose(code uint16, reason string) {
	if !c.closeSent.CompareAndSwap(false, true) {
		return
	}
	if len(reason) > 123 {
		reason = reason[:123]
	}
	c.sendControl(opClose, append(binary.BigEndian.AppendUint16(nil, code), reason...))
}

// CloseError is the close frame the peer sent.
type CloseError struct {
	Code   uint16
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("websocket closed by peer (code %d)", e.Code)
	}
	return fmt.Sprintf("websocket closed by peer (code %d): %s", e.Code, e.Reason)
}

// readPacket reads the next message into p and returns its length; a
// message longer than p is cut to len(p), as a UDP socket cuts a datagram.
// It answers pings and the peer's close. After an error every call returns
// that error.
func (c *frameConn) readPacket(p []byte) (int, error) {
	if c.readErr != nil {
		return 0, c.readErr
	}
	n, err := c.readMessage(p)
	if err != nil {
		var fe *FrameError
		if errors.As(err, &fe) {
			c.sendClose(fe.Code, fe.Reason)
		}
		if !isTimeout(err) || c.readErr != nil {
			c.readErr = err
		}
	}
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *frameConn) readMessage(p []byte) (int, error) {
	total := 0     // bytes of the message so far
	inMsg := false // a data frame without FIN came
	for {
		b, err := c.br.Peek(2)
		if err != nil {
			if total > 0 || len(b) > 0 {
				c.readErr = errTruncated(err)
				return 0, c.readErr
			}
			return 0, err // a deadline here leaves the stream at a frame boundary
		}
		hb, err := c.br.Peek(frameHeaderLen(b[0], b[1]))
		if err != nil {
			c.readErr = errTruncated(err)
			return 0, c.readErr
		}
		h, hn, err := parseFrameHeader(hb)
		if err != nil {
			return 0, err
		}
		if h.masked != !c.client {
			if c.client {
				return 0, &FrameError{closeProtocol, "masked frame from the server"}
			}
			return 0, &FrameError{closeProtocol, "unmasked frame from the client"}
		}
		c.br.Discard(hn)
		switch h.op {
		case opPing, opPong, opClose:
			var buf [125]byte
			body := buf[:h.length]
			if _, err := io.ReadFull(c.br, body); err != nil {
				c.readErr = errTruncated(err)
				return 0, c.readErr
			}
			if h.masked {
				maskBytes(h.key, body)
			}
			switch h.op {
			case opPing:
				c.sendControl(opPong, body)
			case opClose:
				ce := &CloseError{Code: 1005}
				if len(body) >= 2 {
					ce.Code, ce.Reason = binary.BigEndian.Uint16(body), string(body[2:])
				}
				c.sendClose(closeNormal, "")
				c.readErr = ce
				return 0, ce
			}
			continue
		case opBinary:
			if inMsg {
				return 0, &FrameError{closeProtocol, "binary frame inside a fragmented message"}
			}
		case opContinuation:
			if !inMsg {
				return 0, &FrameError{closeProtocol, "continuation frame without a message"}
			}
		}
		if uint64(total)+h.length > MaxFramePayload {
			return 0, &FrameError{closeTooBig, fmt.Sprintf("message of more than %d bytes", MaxFramePayload)}
		}
		l := int(h.length)
		start := min(total, len(p))
		in := min(l, len(p)-start)
		if _, err := io.ReadFull(c.br, p[start:start+in]); err != nil {
			c.readErr = errTruncated(err)
			return 0, c.readErr
		}
		if h.masked {
			maskBytes(h.key, p[start:start+in])
		}
		if in < l { // cut: drop the rest
			if _, err := c.br.Discard(l - in); err != nil {
				c.readErr = errTruncated(err)
				return 0, c.readErr
			}
		}
		total += l
		if h.fin {
			return min(total, len(p)), nil
		}
		inMsg = true
	}
}

func errTruncated(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// close sends a close frame with code (best effort, for a moment), stops
// the writer and closes the connection. It is safe to call more than once.
func (c *frameConn) close(code uint16, reason string) {
	c.closeOnce.Do(func() {
		c.sendClose(code, reason)
		close(c.done)
		// The writer sends the close frame and stops; a writer stuck in a
		// flush to a peer that does not read is cut short.
		stopped := make(chan struct{})
		go func() { c.wg.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * closeFlushTimeout):
			c.conn.Close()
			<-stopped
		}
		c.conn.Close()
		for {
			select {
			case bp := <-c.queue:
				packetPool.Put(bp)
			default:
				return
			}
		}
	})
}
