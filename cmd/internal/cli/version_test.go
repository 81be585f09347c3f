package cli

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionOf(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "5ae3947966b4740df3d607544d3e75c71d35434c"
	tests := []struct {
		name   string
		linked string
		bi     *debug.BuildInfo
		want   string
	}{
		{"link time wins", "v0.3.0", &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}, Settings: vcs(rev, "true")}, "v0.3.0"},
		{"go install @version", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}}, "v0.3.0"},
		{"go build in a checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261208020145-5ae3947966b4+dirty"}, Settings: vcs(rev, "true")},
			"v0.0.0-20261208020145-5ae3947966b4+dirty"},
		{"revision only", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "false")}, "5ae3947966b4"},
		{"revision of a changed tree", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "true")}, "5ae3947966b4-dirty"},
		{"go run", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"no module version", "", &debug.BuildInfo{}, "dev"},
		{"no build info", "", nil, "dev"},
	}
	for _, tc := range tests {
		if got := versionOf(tc.linked, tc.bi); got != tc.want {
			t.Errorf("%s: versionOf(%q, %+v) = %q, want %q", tc.name, tc.linked, tc.bi, got, tc.want)
		}
	}
}

func TestVersionLine(t *testing.T) {
	got := VersionLine("pico-edge")
	want := "pico-edge " + Version() + " (" + runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	if got != want || strings.Contains(got, "\n") {
		t.Errorf("VersionLine = %q, want %q", got, want)
	}
}
