// Package quota is what the gateway's per-client limits and the user
// service's per-account sign-in limit share: the "N per period" rate a
// flag sets ("100/s", "10/m", "0" for none), and how a check against a
// shared store is bounded and its failures reported.
package quota

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Quota is N requests per period, bursts of up to N. The zero Quota is
// no limit.
type Quota struct {
	N   int
	Per time.Duration
}

// String renders a quota as a flag value: "100/s", "10/m", "0".
func (q Quota) String() string {
	if q.N == 0 {
		return "0"
	}
	for _, u := range []struct {
		s string
		d time.Duration
	}{{"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}} {
		if q.Per == u.d {
			return strconv.Itoa(q.N) + "/" + u.s
		}
	}
	return strconv.Itoa(q.N) + "/" + q.Per.String()
}

// Parse reads "N/s", "N/m", "N/h", "N/<duration>" or "0" (off).
func Parse(v string) (Quota, error) {
	if v == "0" {
		return Quota{}, nil
	}
	n, per, ok := strings.Cut(v, "/")
	count, err := strconv.Atoi(n)
	if !ok || err != nil || count < 1 || count > 1_000_000 {
		return Quota{}, fmt.Errorf("%q: want N/s, N/m, N/h or 0 (off), N from 1 to 1000000", v)
	}
	q := Quota{N: count}
	switch per {
	case "s":
		q.Per = time.Second
	case "m":
		q.Per = time.Minute
	case "h":
		q.Per = time.Hour
	default:
		if q.Per, err = time.ParseDuration(per); err != nil || q.Per < time.Second || q.Per > 24*time.Hour {
			return Quota{}, fmt.Errorf("%q: the period must be s, m, h or a duration from 1s to 24h", v)
		}
	}
	return q, nil
}

// Flag is a flag.Value setting *Q.
type Flag struct{ Q *Quota }

func (f Flag) String() string {
	if f.Q == nil {
		return ""
	}
	return f.Q.String()
}

// Set implements flag.Value.
func (f Flag) Set(v string) (err error) {
	*f.Q, err = Parse(v)
	return err
}
