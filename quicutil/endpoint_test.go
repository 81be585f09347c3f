package quicutil_test

import (
	"strings"
	"testing"

	"github.com/pico-edge/pico/quicutil"
)

func TestValidateEndpointID(t *testing.T) {
	tests := map[string]struct {
		id    string
		valid bool
	}{
		"one letter":        {id: "a", valid: true},
		"word":              {id: "foo", valid: true},
		"inner dash":        {id: "a-b", valid: true},
		"double dash":       {id: "a--b", valid: true},
		"digit":             {id: "0", valid: true},
		"digits first":      {id: "123abc", valid: true},
		"63 chars":          {id: strings.Repeat("a", 63), valid: true},
		"63 chars mixed":    {id: "a" + strings.Repeat("-0", 31), valid: true},
		"empty":             {id: ""},
		"dash only":         {id: "-"},
		"leading dash":      {id: "-a"},
		"trailing dash":     {id: "a-"},
		"upper case":        {id: "A"},
		"mixed case":        {id: "fooBar"},
		"underscore":        {id: "a_b"},
		"dot":               {id: "a.b"},
		"space":             {id: "a b"},
		"slash":             {id: "a/b"},
		"NUL":               {id: "a\x00"},
		"64 chars":          {id: strings.Repeat("a", 64)},
		"non-ASCII":         {id: "café"},
		"non-ASCII digit":   {id: "١"},
		"invalid UTF-8":     {id: "a\xff"},
		"punycode is fine":  {id: "xn--caf-dma", valid: true},
		"fullwidth letter":  {id: "ａ"},
		"trailing newline":  {id: "a\n"},
		"percent-encoded":   {id: "a%2fb"},
		"colon (with port)": {id: "web:80"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := quicutil.ValidateEndpointID(tt.id)
			if (err == nil) != tt.valid {
				t.Fatalf("ValidateEndpointID(%q) = %v, want valid %t", tt.id, err, tt.valid)
			}
		})
	}
}
