package edge

import (
	"log/slog"
	"net/http"
	"time"
)

// accessLog writes one line per proxied request.
func (s *Server) accessLog(r *http.Request, w *statusWriter, info *requestInfo, d time.Duration) {
	attrs := []slog.Attr{
		slog.String("endpoint_id", string(info.endpoint)),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("proto", r.Proto),
		slog.Int("status", w.status),
		slog.Int64("bytes_in", r.ContentLength),
		slog.Int64("bytes_out", w.bytes),
		slog.Duration("duration", d),
		slog.String("remote_addr", r.RemoteAddr),
		slog.String("node_id", s.cfg.NodeID),
	}
	if info.agent != "" {
		attrs = append(attrs, slog.String("agent_id", info.agent))
	}
	if info.retried {
		attrs = append(attrs, slog.Bool("retried", true))
	}
	if info.err != nil {
		attrs = append(attrs, slog.String("err", info.err.Error()))
	}
	s.cfg.AccessLog.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}
