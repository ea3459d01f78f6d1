// Package spire runs Trellis on identities from a real SPIRE server and
// agent (github.com/spiffe/spire, built from tools/spire): join-token node
// attestation, the unix workload attestor telling the three trellis
// processes apart by their binary's path, X.509-SVIDs served over the
// SPIFFE Workload API. No mock of the Workload API is involved.
//
// The test has the build tag spire: `make spire` runs it (CI does).
package spire
