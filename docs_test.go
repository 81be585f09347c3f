package pico_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// maxReadmeLines keeps the README a front page; the reference lives in docs/.
const maxReadmeLines = 250

// docFiles returns README.md and every docs/*.md, by path, with their text.
func docFiles(t *testing.T) map[string]string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no docs/*.md")
	}
	files := make(map[string]string, len(paths)+1)
	for _, p := range append(paths, "README.md") {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.ToSlash(p)] = string(b)
	}
	return files
}

// TestDocsReadme checks that the README stays a front page and links every
// page of docs/.
func TestDocsReadme(t *testing.T) {
	files := docFiles(t)
	readme := files["README.md"]
	if n := strings.Count(strings.TrimSuffix(readme, "\n"), "\n") + 1; n > maxReadmeLines {
		t.Errorf("README.md has %d lines, want at most %d: move the reference into docs/", n, maxReadmeLines)
	}
	linked := map[string]bool{}
	for _, l := range mdLinks(readme) {
		path, _, _ := strings.Cut(l.target, "#")
		linked[filepath.ToSlash(filepath.Clean(path))] = true
	}
	for p := range files {
		if p != "README.md" && !linked[p] {
			t.Errorf("README.md does not link %s", p)
		}
	}
}

// TestDocsLinks checks every relative link of README.md and docs/*.md: the
// file it names exists, and so does the heading its #anchor names in a
// Markdown file.
func TestDocsLinks(t *testing.T) {
	files := docFiles(t)
	anchors := map[string]map[string]bool{} // file -> its heading anchors
	anchorsOf := func(p string) map[string]bool {
		if a, ok := anchors[p]; ok {
			return a
		}
		text, ok := files[p]
		if !ok {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			text = string(b)
		}
		anchors[p] = headingAnchors(text)
		return anchors[p]
	}
	checked := 0
	srcs := make([]string, 0, len(files))
	for src := range files {
		srcs = append(srcs, src)
	}
	slices.Sort(srcs)
	for _, src := range srcs {
		for _, l := range mdLinks(files[src]) {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(l.target, "#")
			dst := src
			if path != "" {
				dst = filepath.ToSlash(filepath.Join(filepath.Dir(src), path))
				if _, err := os.Stat(dst); err != nil {
					t.Errorf("%s:%d: link to %s: %v", src, l.line, l.target, err)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(dst, ".md") && !anchorsOf(dst)[anchor] {
				t.Errorf("%s:%d: link to %s: %s has no heading #%s", src, l.line, l.target, dst, anchor)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no relative links: the link parser is broken")
	}
}

// TestDocsFlags builds the commands and fails when a flag that --help
// shows, for a command or any of its subcommands, appears in neither
// README.md nor docs/*.md.
func TestDocsFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the commands: skipped under -short")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/pico-edge", "./cmd/pico-agent", "./cmd/pico-bench")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var corpus strings.Builder
	for _, text := range docFiles(t) {
		corpus.WriteString(text)
		corpus.WriteByte('\n')
	}
	docs := corpus.String()

	// pico-edge and pico-agent are kong commands with subcommands, found
	// in the "Commands:" section of each help. pico-bench has only flags
	// (Go's flag package); its helper subcommands are processes the
	// harness starts, not an interface, and are not checked.
	for _, c := range []struct {
		name    string
		subcmds bool
	}{{"pico-edge", true}, {"pico-agent", true}, {"pico-bench", false}} {
		bin := filepath.Join(dir, c.name)
		seen := map[string]bool{"": true}
		queue := [][]string{nil}
		var shown []helpFlag
		for len(queue) > 0 {
			args := queue[0]
			queue = queue[1:]
			out := help(t, bin, args)
			for _, f := range parseHelpFlags(out) {
				f.where = strings.Join(append([]string{c.name}, args...), " ")
				shown = append(shown, f)
			}
			for _, sub := range parseHelpCommands(out) {
				// Every prefix too: "status" has flags of its own.
				for i := 1; i <= len(sub); i++ {
					if key := strings.Join(sub[:i], " "); !seen[key] {
						seen[key] = true
						queue = append(queue, sub[:i])
					}
				}
			}
		}
		if c.subcmds && len(seen) == 1 {
			t.Errorf("%s --help lists no subcommands: the help parser is broken", c.name)
		}
		if len(shown) == 0 {
			t.Fatalf("%s --help shows no flags: the help parser is broken", c.name)
		}
		t.Logf("%s: %d help outputs, %d flag definitions", c.name, len(seen), len(shown))
		missing := map[string][]string{} // flag -> commands whose help shows it
		for _, f := range shown {
			if !documented(docs, f) {
				if !slices.Contains(missing[f.display()], f.where) {
					missing[f.display()] = append(missing[f.display()], f.where)
				}
			}
		}
		names := make([]string, 0, len(missing))
		for n := range missing {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			t.Errorf("%s (in %s --help) appears in neither README.md nor docs/*.md", n, strings.Join(missing[n], ", "))
		}
	}
}

// help runs bin with args and --help, and returns what it printed.
func help(t *testing.T, bin string, args []string) string {
	t.Helper()
	out, err := exec.Command(bin, append(slices.Clone(args), "--help")...).CombinedOutput()
	if !bytes.Contains(out, []byte("Usage")) {
		t.Fatalf("%s %s --help: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// helpFlag is a flag a --help output defines.
type helpFlag struct {
	name      string // without dashes
	negatable bool   // kong's --[no-]name
	oneDash   bool   // Go's flag package: -name (which also takes --name)
	where     string // the command whose help showed it
}

func (f helpFlag) display() string {
	switch {
	case f.negatable:
		return "--[no-]" + f.name
	case f.oneDash:
		return "-" + f.name
	}
	return "--" + f.name
}

// A flag definition starts a help line: kong indents it by 2 (6 after a
// short flag's column, "  -h, --help"), Go's flag package by 2 with one
// dash. Lines of descriptions are indented further, so a flag a
// description mentions is not taken for one the command defines.
var helpFlagRE = regexp.MustCompile(`(?m)^  (?:-[a-zA-Z], |    )?(--?)(\[no-\])?([a-z0-9][a-z0-9-]*)`)

func parseHelpFlags(out string) []helpFlag {
	var flags []helpFlag
	for _, m := range helpFlagRE.FindAllStringSubmatch(out, -1) {
		flags = append(flags, helpFlag{name: m[3], negatable: m[2] != "", oneDash: m[1] == "-"})
	}
	return flags
}

// parseHelpCommands returns the commands of kong's "Commands:" section:
// "  status endpoints [flags]" is {"status", "endpoints"}.
func parseHelpCommands(out string) [][]string {
	_, section, ok := strings.Cut(out, "\nCommands:\n")
	if !ok {
		return nil
	}
	var cmds [][]string
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
			continue // a description, a blank line or the closing note
		}
		var words []string
		for _, w := range strings.Fields(line) {
			if !isCommandWord(w) {
				break
			}
			words = append(words, w)
		}
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
	}
	return cmds
}

func isCommandWord(w string) bool {
	if w == "" || w[0] < 'a' || w[0] > 'z' {
		return false
	}
	return strings.Trim(w, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// documented reports whether docs mention f as a flag: --name (or for a
// Go flag -name) not followed by more of a flag name; a negatable flag
// also as --[no-]name or --no-name.
func documented(docs string, f helpFlag) bool {
	dashes := "--"
	if f.oneDash {
		dashes = "--?"
	}
	prefix := ""
	if f.negatable {
		prefix = `(?:\[no-\]|no-)?`
	}
	re := regexp.MustCompile(`(?:^|[^a-zA-Z0-9-])` + dashes + prefix + regexp.QuoteMeta(f.name) + `(?:[^a-zA-Z0-9-]|$)`)
	return re.MatchString(docs)
}

// mdLink is a Markdown link [text](target) outside code.
type mdLink struct {
	target string
	line   int
}

var mdLinkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func mdLinks(text string) []mdLink {
	var links []mdLink
	for i, line := range strings.Split(withoutCode(text), "\n") {
		for _, m := range mdLinkRE.FindAllStringSubmatch(line, -1) {
			links = append(links, mdLink{target: m[1], line: i + 1})
		}
	}
	return links
}

// headingAnchors returns the anchors GitHub gives the headings of text:
// lower case, spaces to '-', punctuation other than '-' and '_' dropped,
// and -1, -2, ... after a repeated one.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	count := map[string]int{}
	forProse(text, func(_ int, line string) {
		level := len(line) - len(strings.TrimLeft(line, "#"))
		title, ok := strings.CutPrefix(line[level:], " ")
		if level == 0 || level > 6 || !ok {
			return
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(title)) {
			switch {
			case r == ' ':
				b.WriteByte('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := count[a]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			anchors[a] = true
		}
		count[a]++
	})
	return anchors
}

// forProse calls fn with each line of text outside fenced code blocks,
// numbered from 1.
func forProse(text string, fn func(n int, line string)) {
	fence := ""
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case fence != "":
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
		case strings.HasPrefix(trimmed, "```"), strings.HasPrefix(trimmed, "~~~"):
			fence = trimmed[:3]
		default:
			fn(i+1, line)
		}
	}
}

// withoutCode returns text with its fenced code blocks and `code spans`
// blanked, line for line: brackets in code are not links. A code span may
// run over several lines of a paragraph; a backtick without a partner in
// its paragraph is left as it is.
func withoutCode(text string) string {
	var prose []string
	n := 0
	forProse(text, func(i int, line string) {
		for n < i-1 {
			prose = append(prose, "") // a line of a fenced block
			n++
		}
		prose = append(prose, line)
		n++
	})
	var out []string
	for _, para := range strings.Split(strings.Join(prose, "\n"), "\n\n") {
		parts := strings.Split(para, "`")
		for i := 1; i+1 < len(parts); i += 2 {
			parts[i] = strings.Map(func(r rune) rune {
				if r == '\n' {
					return r
				}
				return ' '
			}, parts[i])
		}
		out = append(out, strings.Join(parts, "`"))
	}
	return strings.Join(out, "\n\n")
}
