package deploy_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"sigs.k8s.io/yaml"
)

const alertsFile = "deploy/prometheus/alerts.yml"

// alertCases say, for each alert, series on which it fires (for the
// instance "a") and series on which it stays quiet, sampled every minute
// for 20 minutes and evaluated at the end — what the rule means, not only
// that it parses. Every alert in alerts.yml needs one.
var alertCases = map[string]struct{ firing, quiet string }{
	"TrellisDown": {
		`up{job="trellis",instance="a"} 1x10 0x10`,
		`up{job="trellis",instance="a"} 1x20`},
	"TrellisGatewayErrors": { // 9% of requests 503; then 0.5%
		`http_requests_total{instance="a",method="GET",route="/r",code="200"} 0+600x20
		 http_requests_total{instance="a",method="GET",route="/r",code="503"} 0+60x20`,
		`http_requests_total{instance="a",method="GET",route="/r",code="200"} 0+600x20
		 http_requests_total{instance="a",method="GET",route="/r",code="503"} 0+3x20
		 http_requests_total{instance="a",method="GET",route="/r",code="429"} 0+600x20`},
	"TrellisGatewaySlow": { // p99 between 1 and 2.5 s; then under 0.5 s
		`http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="0.5"} 0+10x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="1"} 0+10x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="2.5"} 0+100x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="+Inf"} 0+100x20`,
		`http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="0.5"} 0+100x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="1"} 0+100x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="2.5"} 0+100x20
		 http_request_duration_seconds_bucket{instance="a",method="GET",route="/r",le="+Inf"} 0+100x20`},
	"TrellisBreakerOpen": {
		`trellis_breaker_state{instance="a",caller="order",upstream="user"} 2x20`,
		`trellis_breaker_state{instance="a",caller="order",upstream="user"} 1x20`},
	"TrellisShedding": { // 1 call in 6 refused as overload; then deadline refusals, which are the caller's, and 1%
		`trellis_server_refused_total{instance="a",method="/m",reason="overload"} 0+120x20
		 trellis_server_admitted_total{instance="a",server="order"} 0+600x20`,
		`trellis_server_refused_total{instance="a",method="/m",reason="deadline"} 0+600x20
		 trellis_server_refused_total{instance="a",method="/m",reason="overload"} 0+6x20
		 trellis_server_admitted_total{instance="a",server="order"} 0+600x20`},
	"TrellisConnectionLimitReached": { // a gateway, which has no gRPC server's series; then one client's share only
		`trellis_gateway_connections_refused_total{instance="a",reason="max"} 0+5x20
		 trellis_gateway_connections_refused_total{instance="a",reason="per_client"} 0x20`,
		`trellis_gateway_connections_refused_total{instance="a",reason="max"} 0x20
		 trellis_gateway_connections_refused_total{instance="a",reason="per_client"} 0+500x20
		 trellis_server_connections_refused_total{instance="a",server="user",reason="max"} 0x20`},
	"TrellisRateLimiting": {
		`trellis_gateway_rate_limited_total{instance="a",class="write"} 0+600x20`,
		`trellis_gateway_rate_limited_total{instance="a",class="write"} 0+30x20`},
	"TrellisLimitStoreUnavailable": {
		`trellis_gateway_rate_limit_store_errors_total{instance="a"} 0x20
		 trellis_user_signin_limit_store_errors_total{instance="a"} 0+30x20`,
		`trellis_gateway_rate_limit_store_errors_total{instance="a"} 7x20
		 trellis_user_signin_limit_store_errors_total{instance="b"} 3x20`},
	"TrellisOutboxFailing": {
		`trellis_outbox_errors_total{instance="a",service="order"} 0+6x20`,
		`trellis_outbox_errors_total{instance="a",service="order"} 5x20`},
	"TrellisOutboxBacklog": {
		`trellis_outbox_pending{instance="a",service="order"} 20000x20`,
		`trellis_outbox_pending{instance="a",service="order"} 50x20`},
	"TrellisEventsDropped": {
		`trellis_consumer_handled_total{instance="a",consumer="c",result="dropped"} 0x15 1x5`,
		`trellis_consumer_handled_total{instance="a",consumer="c",result="dropped"} 0x20
		 trellis_consumer_handled_total{instance="a",consumer="c",result="retry"} 0+10x20`},
	"TrellisCallsDenied": {
		`trellis_authz_denied_total{instance="a",caller="order",method="/m"} 0x15 3x5`,
		`trellis_authz_denied_total{instance="a",caller="order",method="/m"} 3x20`},
}

// loadAlerts parses alerts.yml as Prometheus does (unknown fields refused,
// every expression and template checked).
func loadAlerts(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(filepath.Join(root, alertsFile), false, model.UTF8Validation,
		parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.FailNow()
	}
	return groups
}

// TestAlertRules: alerts.yml parses as Prometheus parses it; every alert
// has a severity, a summary and a description; Prometheus loads it
// (prometheus.yml names it, compose mounts it beside); and each alert
// fires on the series its case says and not on the quiet ones.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	groups := loadAlerts(t)
	var names []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %q; the file holds alerts", g.Name, r.Record)
				continue
			}
			names = append(names, r.Alert)
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: no summary or description", r.Alert)
			}
			c, ok := alertCases[r.Alert]
			if !ok {
				t.Errorf("%s: no case in alertCases says when it fires", r.Alert)
				continue
			}
			t.Run(r.Alert, func(t *testing.T) {
				if got := evalAlert(t, c.firing, r.Expr); len(got) == 0 {
					t.Errorf("does not fire on\n%s", c.firing)
				} else if got[0].Metric.Get("instance") != "a" {
					t.Errorf("fires without naming the instance: %v", got[0].Metric)
				}
				if got := evalAlert(t, c.quiet, r.Expr); len(got) != 0 {
					t.Errorf("fires (%v) on\n%s", got, c.quiet)
				}
			})
		}
	}
	for name := range alertCases {
		if !slices.Contains(names, name) {
			t.Errorf("alertCases has %s, which alerts.yml does not", name)
		}
	}

	b, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		RuleFiles []string `json:"rule_files"`
	}
	if err := yaml.Unmarshal(b, &prom); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(prom.RuleFiles, []string{filepath.Base(alertsFile)}) {
		t.Errorf("prometheus.yml rule_files %v, want [%s]", prom.RuleFiles, filepath.Base(alertsFile))
	}
	p, abs := loadCompose(t)
	mounts := map[string]string{}
	for _, v := range p.Services["prometheus"].Volumes {
		mounts[strings.TrimPrefix(v.Source, abs+"/")] = v.Target
	}
	config, rules := mounts["deploy/prometheus/prometheus.yml"], mounts[alertsFile]
	if config == "" || rules != filepath.Join(filepath.Dir(config), filepath.Base(alertsFile)) {
		t.Errorf("compose mounts prometheus.yml at %q and alerts.yml at %q; want alerts.yml beside it, where rule_files looks", config, rules)
	}
}

// evalAlert evaluates expr at the end of 20 minutes of series (promqltest's
// load syntax, one sample a minute).
func evalAlert(t *testing.T, series, expr string) promql.Vector {
	t.Helper()
	storage := promqltest.LoadedStorage(t, "load 1m\n"+series)
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	q, err := engine.NewInstantQuery(context.Background(), storage, nil, expr, time.Unix(0, 0).Add(20*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	res := q.Exec(context.Background())
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	v, err := res.Vector()
	if err != nil {
		t.Fatal(err)
	}
	return v
}
