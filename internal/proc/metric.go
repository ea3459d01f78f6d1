package proc

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// metricClient bounds a scrape: a hung process must not hang its reader.
var metricClient = &http.Client{Timeout: 10 * time.Second}

// Metric reads a process's Prometheus endpoint at http://admin/metrics and
// returns the sum of the series of name whose labels contain every given
// label="value" (0 when there is none).
func Metric(admin, name string, labels ...string) (float64, error) {
	resp, err := metricClient.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s/metrics: %s", admin, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name) || len(line) == len(name) || line[len(name)] != '{' && line[len(name)] != ' ' {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum, nil
}
