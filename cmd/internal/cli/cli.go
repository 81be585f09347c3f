// Package cli holds what both Pico commands share: logging set-up, the
// version, and signal handling. Only the commands import it.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/lmittmann/tint"

	"github.com/pico-edge/pico/certs"
)

// LogFlags are the logging flags of both commands.
type LogFlags struct {
	LogLevel  string `help:"Log level: debug, info, warn or error." default:"info" enum:"debug,info,warn,error"`
	LogFormat string `help:"Log format: auto (coloured text on a terminal, JSON otherwise), text or json." default:"auto" enum:"auto,text,json"`
}

// Logger builds the logger the flags ask for, writing to w.
func (f LogFlags) Logger(w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(f.LogLevel))
	format := f.LogFormat
	isTerm := false
	if file, ok := w.(*os.File); ok {
		if st, err := file.Stat(); err == nil {
			isTerm = st.Mode()&os.ModeCharDevice != 0
		}
	}
	if format == "auto" {
		format = "json"
		if isTerm {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewHandler(w, &tint.Options{Level: level, NoColor: !isTerm, TimeFormat: "15:04:05.000"}))
}

// Version is the module version the binary was built from, or "dev".
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// SignalContext is cancelled at the first SIGINT or SIGTERM; a second one
// exits at once.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-ch:
		case <-ctx.Done():
			signal.Stop(ch)
			return
		}
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		os.Exit(1)
	}()
	return ctx, cancel
}

// DataDir is pico-edge's default --data-dir, where it keeps its development
// CA: $XDG_DATA_HOME/pico, else ~/.local/share/pico. pico-agent looks there
// for that CA when it has no --ca and dials an edge on this machine.
func DataDir() string { return certs.DefaultDir() }

// SplitList splits a comma-separated flag value, dropping blanks.
func SplitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
