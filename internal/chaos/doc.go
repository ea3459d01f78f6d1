// Package chaos holds the fault-injection suite (make chaos): each
// component runs as its own OS process, steady load goes through the
// gateway, faults are injected (kill -9, slow and broken networks, rolling
// restarts, an unreachable database) and a ledger of every request, row
// and event is checked. The tests live behind the "chaos" build tag.
package chaos
