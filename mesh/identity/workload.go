package identity

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// OpenWorkloadAPI connects to a SPIFFE Workload API (a SPIRE agent) and
// returns once it has served an SVID. socket is a unix:///path address;
// empty means the SPIFFE_ENDPOINT_SOCKET environment variable. The SVID and
// bundles stream in as the agent rotates them.
func OpenWorkloadAPI(ctx context.Context, socket string) (Source, error) {
	var opts []workloadapi.X509SourceOption
	if socket != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(socket)))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("identity: SPIFFE Workload API: %w", err)
	}
	return src, nil
}
