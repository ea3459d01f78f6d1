// Package hostile holds Trellis's hostile-client suite (tests only): a real
// `trellis run` process attacked through its public ports — generated
// malformed and boundary inputs for every route and every RPC, oversized
// metadata, answers never read, requests never finished — asserting that a
// client's mistake is never a 5xx or INTERNAL, never opens a breaker, never
// makes the process unready, and never grows it past the stated bound.
package hostile
