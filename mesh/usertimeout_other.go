//go:build !linux

package mesh

import (
	"net"
	"time"
)

// setUserTimeout: TCP_USER_TIMEOUT is Linux's (grpc-go sets it only there too).
func setUserTimeout(net.Conn, time.Duration) {}
