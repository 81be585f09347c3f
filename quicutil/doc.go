// Package quicutil is the wire protocol that pico-edge and pico-agent share:
// ALPN names, the stream header and answer, control messages, error codes,
// quic-go configuration presets, a QUIC stream as a net.Conn, and Join, which
// splices two connections with half-close.
//
// It imports no other Pico package.
//
// # Flow
//
//	agent                                   edge
//	  | QUIC handshake, ALPN "pico-agent/1"   |
//	  |-- stream 0: header{kind=control} ---->|
//	  |-- Hello{token, agent} --------------->|
//	  |<-------------- Welcome{node} ---------|  (or CONNECTION_CLOSE with a code)
//	  |-- Register{seq, endpoints} ---------->|
//	  |<-------------- Result{seq, per-ID} ---|
//	  |-- Refresh{seq, token} --------------->|  (new token for a live link)
//	  |<-------------- Result{seq, per-ID} ---|
//	  |                 ...                   |
//	  |<-------------- CONNECTION_CLOSE ------|  (ConnCodeUnauthorized "token expired",
//	  |                                       |   at exp + leeway unless refreshed)
//	  |<-------------- GoAway{reason} --------|  (node drains: move elsewhere)
//	  |                                       |
//	  |<== stream: header{http|tcp, id, client} + request bytes
//	  |==> answer{code, msg} + response bytes (code OK: upstream reached)
//	  |                                       |
//	  |== stream: header{tcp, id, token} ===> |  (Dial / pico-agent forward)
//	  |<========================= answer + bytes
//
// # Stream header
//
// Every bidirectional stream starts with a header written by the side that
// opens it, in the same flight as the first payload bytes:
//
//	version  uint8        HeaderVersion (1)
//	length   uint16 (BE)  length of the rest, at most MaxHeaderLen
//	kind     uint8        KindControl (0), KindHTTP (1: HTTP/1.1), KindTCP (2: raw)
//	                      KindHTTP2 (3: HTTP/2 with prior knowledge) or
//	                      KindTLS (4: raw, a TLS connection passed through by SNI)
//	flags    uint8        FlagRelayed (bit 0); other bits must be zero
//	idLen    uint8        0 for control, else 1..63
//	id       [idLen]      endpoint ID, a DNS label (ValidateEndpointID)
//	addrLen  uint8        0..MaxAddrLen
//	addr     [addrLen]    client address ("ip:port"), informational
//	extensions            until length: key uint8 | len uvarint | value;
//	                      unknown keys are skipped, so fields can be added
//	                      without a new version.
//
// The side that accepts a stream of kind http or tcp answers before any
// other byte:
//
//	code    uint8   StatusOK, or why the stream cannot be served
//	msgLen  uint8
//	msg     [msgLen] a short reason for people, UTF-8
//
// StatusOK means the upstream was reached. Any other code means the upstream
// never saw a byte, so the opener may retry on another target.
//
// Streams end with FIN, or are cut with RESET_STREAM / STOP_SENDING and a
// code: StreamCodeCanceled (0), StreamCodeAborted (1), StreamCodeIdleTimeout
// (2), StreamCodeBadHeader (3) and StreamCodeUnsent (4). An agent stops an
// HTTP/1.1 stream's sending side with StreamCodeUnsent when bytes come
// after its upstream closed the connection with nothing sent to it since
// its last byte (an idle keep-alive connection closed as the next request
// came): no byte of that request reached the upstream, and the edge may
// send it again, whatever its method. A relaying node passes the code on.
//
// # Control stream
//
// The first stream an agent opens has kind control and carries frames:
//
//	type    uint8
//	length  uvarint, at most MaxControlFrameLen
//	body    [length]
//
// Bodies are sequences of uvarint integers and length-prefixed strings; each
// message type documents its fields beside its Go type.
//
// # Authentication
//
// When the edge verifies tokens, Hello.Token must be a JWT the edge accepts
// (signature, exp, nbf, iss, aud, lifetime); otherwise the edge closes the
// connection with ConnCodeUnauthorized and the reason ("token expired at
// ...", "token signature is invalid", ...), and an agent does not retry
// with the same token. The token's endpoint claim decides which endpoints
// Register may add: one it does not allow gets StatusForbidden, the others
// are unaffected. At the token's expiry (plus the edge's leeway) the edge
// closes the connection with ConnCodeUnauthorized "token expired" unless a
// Refresh brought a newer token. A stream the agent opens (Dial) carries
// its token in the header's ExtToken extension; an edge that authenticates
// clients answers StatusUnauthorized (no or bad token) or StatusForbidden
// (endpoint not in the token) and closes the stream.
//
// # Node-to-node relay
//
// A node that has no local agent for an endpoint relays to a node that has
// one, over a QUIC connection with ALPN "pico-peer/1" (one per peer, dialled
// lazily, PeerConfig). The dialler's first stream is a control stream:
//
//	node A                                  node B
//	  |-- stream 0: header{kind=control} ---->|
//	  |-- PeerHello{A, proof_A} ------------->|  proof = HMAC-SHA256(cluster secret,
//	  |<------------- PeerReady{B, proof_B} --|    label | TLS exporter of this connection)
//	  |== stream: header{http|tcp, id, client, flags=relayed} + bytes ==>|
//	  |<== answer + bytes (B copies both ways to a stream to its agent) ==|
//
// Each proof binds the secret to this TLS connection (a replayed or relayed
// proof fails) and the labels differ by direction. B accepts no other stream
// before a valid PeerHello, and serves relayed streams only from its own
// agents: a relayed stream is never relayed again.
package quicutil
