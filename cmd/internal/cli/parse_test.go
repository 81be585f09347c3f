package cli

import (
	"slices"
	"testing"
)

func TestJoinNegative(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"--new-conns-per-ip", "-1"}, []string{"--new-conns-per-ip=-1"}},
		{[]string{"token", "--ttl", "-1h", "--endpoints", "foo"}, []string{"token", "--ttl=-1h", "--endpoints", "foo"}},
		{[]string{"--ttl", "-.5h"}, []string{"--ttl=-.5h"}},
		{[]string{"--x=1", "-1"}, []string{"--x=1", "-1"}},                                       // the flag has its value
		{[]string{"--log-level", "-v"}, []string{"--log-level", "-v"}},                           // not a number: kong's error
		{[]string{"--", "--a", "-1"}, []string{"--", "--a", "-1"}},                               // after --: arguments
		{[]string{"forward", "-1", "db"}, []string{"forward", "-1", "db"}},                       // no flag before it
		{[]string{"--edge", "h:1", "--connections"}, []string{"--edge", "h:1", "--connections"}}, // no value at all
	} {
		if got := JoinNegative(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("JoinNegative(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
