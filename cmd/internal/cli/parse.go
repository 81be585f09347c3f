package cli

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/alecthomas/kong"
)

// ExitError is the exit code of every error of both commands: a bad flag
// or argument, a config file error, a permanent refusal. The error itself
// is one line on stderr that says what, where and what to do.
const ExitError = 1

// Parse parses args with p, after JoinNegative. On an error it writes one
// line to stderr, "NAME: what (fix)", and returns ok false: the caller
// exits ExitError. No usage is printed: --help has it.
func Parse(p *kong.Kong, args []string, stderr io.Writer) (kctx *kong.Context, ok bool) {
	kctx, err := p.Parse(JoinNegative(args))
	if err == nil {
		return kctx, true
	}
	fmt.Fprintln(stderr, ErrorLine(p, err))
	return nil, false
}

// ErrorLine is the one line Parse prints for a parse error err: the
// command, the error, and where the flags are listed.
func ErrorLine(p *kong.Kong, err error) string {
	cmd := p.Model.Name
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		n := pe.Context.Selected()
		for n != nil && n.Hidden { // pico-edge's serve, the default command
			n = n.Parent
		}
		if n != nil {
			cmd = n.FullPath()
		}
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	return fmt.Sprintf("%s: %s; see '%s --help'", p.Model.Name, msg, cmd)
}

// negative is a value that starts with a minus: a number or a duration.
var negative = regexp.MustCompile(`^-[0-9.]`)

// JoinNegative turns "--flag -1" into "--flag=-1": kong reads a value that
// starts with "-" as a short flag, and no flag of Pico's is a digit, so a
// negative number or duration after a long flag is its value
// (--new-conns-per-ip -1, --ttl -1h: the second then fails with its own
// message rather than as an unknown flag). Arguments after "--" stay.
func JoinNegative(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if strings.HasPrefix(a, "--") && !strings.Contains(a, "=") && i+1 < len(args) && negative.MatchString(args[i+1]) {
			out = append(out, a+"="+args[i+1])
			i++
			continue
		}
		out = append(out, a)
	}
	return out
}
