package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/alecthomas/kong"
	"go.yaml.in/yaml/v3"
)

// ConfigFile is the --config flag: a YAML file whose top-level keys are
// flag names (proxy-addr, or proxy_addr) and whose values are what the flag
// would take (a list for a flag that takes several). ${VAR} in a value is
// replaced with the environment variable VAR, which must be set: secrets
// stay out of the file. Precedence: a flag on the command line, then its
// PICO_* environment variable, then the file, then the default.
type ConfigFile string

// BeforeResolve loads the file and adds it as the last source of values.
func (c ConfigFile) BeforeResolve(k *kong.Kong, ctx *kong.Context, trace *kong.Path) error {
	path := string(ctx.FlagValue(trace.Flag).(ConfigFile))
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	r, err := parseConfig(path, b, flagNames(k.Model.Node))
	if err != nil {
		return err
	}
	ctx.AddResolver(r)
	return nil
}

// flagNames lists the flags of n and its subcommands, but not --config.
func flagNames(n *kong.Node) map[string]bool {
	out := make(map[string]bool)
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, f := range n.Flags {
			if _, isConfig := f.Target.Interface().(ConfigFile); !isConfig && f.Name != "help" && f.Name != "version" {
				out[f.Name] = true
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(n)
	return out
}

// configResolver answers flags from a parsed config file.
type configResolver struct {
	values map[string]string // flag name -> value, lists joined with ","
}

func (r *configResolver) Validate(*kong.Application) error { return nil }

func (r *configResolver) Resolve(_ *kong.Context, _ *kong.Path, f *kong.Flag) (any, error) {
	v, ok := r.values[f.Name]
	if !ok {
		return nil, nil
	}
	for _, env := range f.Envs {
		if _, set := os.LookupEnv(env); set {
			return nil, nil // the environment wins over the file
		}
	}
	return v, nil
}

// parseConfig reads a config file: every key must be one of known (flag
// names), and every error says where.
func parseConfig(path string, b []byte, known map[string]bool) (*configResolver, error) {
	r := &configResolver{values: make(map[string]string)}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return r, nil // an empty file
		}
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(doc.Content) == 0 {
		return r, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a mapping of flag names to values", path, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := strings.ReplaceAll(strings.ToLower(k.Value), "_", "-")
		if !known[name] {
			return nil, fmt.Errorf("%s:%d: unknown key %q (the keys are the flags of --help, without the dashes)", path, k.Line, k.Value)
		}
		if _, dup := r.values[name]; dup {
			return nil, fmt.Errorf("%s:%d: key %q given twice", path, k.Line, k.Value)
		}
		var raw []string
		switch v.Kind {
		case yaml.ScalarNode:
			raw = []string{v.Value}
		case yaml.SequenceNode:
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("%s:%d: key %q: a list of plain values only", path, item.Line, k.Value)
				}
				raw = append(raw, item.Value)
			}
		default:
			return nil, fmt.Errorf("%s:%d: key %q: want a value or a list of values", path, v.Line, k.Value)
		}
		for j, s := range raw {
			var missing []string
			raw[j] = os.Expand(s, func(name string) string {
				val, ok := os.LookupEnv(name)
				if !ok {
					missing = append(missing, name)
				}
				return val
			})
			if len(missing) > 0 {
				return nil, fmt.Errorf("%s:%d: key %q uses ${%s}, which is not set", path, v.Line, k.Value, missing[0])
			}
		}
		r.values[name] = strings.Join(raw, ",")
	}
	return r, nil
}
