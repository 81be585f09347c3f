package edge

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/pico-edge/pico/quicutil"
)

// parsePublicURL checks one of Config.PublicURLs: http:// or https://, a
// host, and nothing after it.
func parsePublicURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("edge: config: public URL %q: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("edge: config: public URL %q: want http(s)://HOST[:PORT], the name under which ENDPOINT.HOST reaches the endpoints", s)
	}
	return u, nil
}

// endpointURLs returns the URLs at which clients reach HTTP endpoint id,
// one per Config.PublicURLs (https://example.com: https://ID.example.com/),
// as the Result of a registration carries them: separated by spaces,
// within a Result message's bound.
func (s *Server) endpointURLs(id string) string {
	var b strings.Builder
	for _, base := range s.cfg.PublicURLs {
		u, err := url.Parse(base) // checked by Validate
		if err != nil {
			continue
		}
		host := id + "." + u.Hostname()
		if p := u.Port(); p != "" {
			host = net.JoinHostPort(host, p)
		}
		one := u.Scheme + "://" + host + "/"
		if b.Len()+1+len(one) > quicutil.MaxResultMessage {
			break
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(one)
	}
	return b.String()
}
