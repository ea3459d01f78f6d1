package etag_test

import (
	"testing"
	"testing/quick"

	"github.com/trellis-mesh/trellis/internal/etag"
)

func TestRoundTripAndHTTPForms(t *testing.T) {
	t.Parallel()
	if err := quick.Check(func(v int64) bool {
		if v < 1 {
			v = -v + 1
		}
		if v < 1 {
			return true
		}
		for _, s := range []string{etag.Of(v), `"` + etag.Of(v) + `"`, `W/"` + etag.Of(v) + `"`} {
			if got, ok := etag.Parse(s); !ok || got != v {
				return false
			}
		}
		return true
	}, nil); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "v", "v0", "v-1", "1", "vx", "v99999999999999999999", "\x00", "*"} {
		if _, ok := etag.Parse(bad); ok {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
