package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/pico-edge/pico/agent"
)

// tokenFilePoll is how often --token-file is looked at.
const tokenFilePoll = 2 * time.Second

// readTokenFile reads a token file: its text, surrounding whitespace
// trimmed.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := string(bytes.TrimSpace(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	return tok, nil
}

// token returns the token of --token or --token-file.
func (g *Globals) token() (string, error) {
	switch {
	case g.Token != "" && g.TokenFile != "":
		return "", errors.New("--token and --token-file: give one")
	case g.TokenFile != "":
		return readTokenFile(g.TokenFile)
	}
	return g.Token, nil
}

// withTokenFile wraps work so that, with --token-file, the file is watched
// while it runs: when it changes, the agent presents the new token (new
// links use it, live links refresh theirs). Work that ends without error
// is held until ctx ends, as runAgent would.
func (g *Globals) withTokenFile(a *agent.Agent, log *slog.Logger, work func(context.Context) error) func(context.Context) error {
	if g.TokenFile == "" {
		return work
	}
	return func(ctx context.Context) error {
		wctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { watchTokenFile(wctx, g.TokenFile, a, tokenFilePoll, log) })
		defer func() { stop(); wg.Wait() }()
		if err := work(ctx); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
}

// watchTokenFile looks at path every interval until ctx ends; when its
// modification time or size changed and it holds another token, it hands
// the token to a.SetToken.
func watchTokenFile(ctx context.Context, path string, a *agent.Agent, interval time.Duration, log *slog.Logger) {
	type stamp struct {
		mod  time.Time
		size int64
	}
	stat := func() (stamp, bool) {
		fi, err := os.Stat(path)
		if err != nil {
			return stamp{}, false
		}
		return stamp{fi.ModTime(), fi.Size()}, true
	}
	last, _ := stat()
	current, _ := readTokenFile(path)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st, ok := stat()
		if !ok || st == last {
			continue
		}
		last = st
		tok, err := readTokenFile(path)
		if err != nil {
			log.Warn("token file changed but holds no token; keeping the current one", "err", err)
			continue
		}
		if tok == current {
			continue
		}
		current = tok
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = a.SetToken(rctx, tok)
		cancel()
		if err != nil {
			log.Error("token file changed: the edge did not take all of the new token", "file", path, "err", err)
			continue
		}
		log.Info("token file changed: new token in use", "file", path)
	}
}
