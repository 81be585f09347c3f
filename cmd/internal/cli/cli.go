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
	"runtime"
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

// version is set at link time by the release build (.ci/release):
// -ldflags "-X github.com/pico-edge/pico/cmd/internal/cli.version=v0.3.0".
var version string

// Version is the version of both commands, one rule for both: the version
// set at link time; else the module version in the build info (go install
// ...@v0.3.0, or the pseudo-version go build stamps in a git checkout);
// else the VCS revision in the build info (12 hex digits, "-dirty" when
// the tree had changes); else "dev" (go run, go test).
func Version() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(version, bi)
}

func versionOf(linked string, bi *debug.BuildInfo) string {
	if linked != "" {
		return linked
	}
	if bi == nil {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// VersionLine is what --version prints for the command name:
// "pico-edge v0.3.0 (go1.26.1, linux/amd64)".
func VersionLine(name string) string {
	return fmt.Sprintf("%s %s (%s, %s/%s)", name, Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
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
