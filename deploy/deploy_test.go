package deploy_test

import (
	"context"
	"encoding/json"
	"flag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
)

const root = ".."

// knownEnv is every environment variable trellis reads: one per flag of
// `trellis run` (from the binary's own flag set), plus the OpenTelemetry
// SDK's standard variables.
func knownEnv(t *testing.T) map[string]bool {
	t.Helper()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg app.Config
	cfg.RegisterFlags(fs)
	env := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { env[app.EnvName(f.Name)] = true })
	return env
}

func checkEnv(t *testing.T, where string, names []string, known map[string]bool) {
	t.Helper()
	for _, n := range names {
		if !known[n] && !strings.HasPrefix(n, "OTEL_") {
			t.Errorf("%s sets %s, which trellis does not read", where, n)
		}
	}
}

// loadCompose loads compose.yaml as `docker compose --profile
// observability` would, and returns it with the repository's absolute path.
func loadCompose(t *testing.T) (*types.Project, string) {
	t.Helper()
	abs, _ := filepath.Abs(root)
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "compose.yaml")}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("trellis", true)
		o.Profiles = []string{"observability"}
	})
	if err != nil {
		t.Fatalf("compose.yaml does not load: %v", err)
	}
	return p, abs
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	p, abs := loadCompose(t)
	for name, image := range map[string]string{"postgres": "postgres:15", "redis": "redis:7-alpine", "user": "trellis:latest", "order": "trellis:latest", "gateway": "trellis:latest"} {
		s, ok := p.Services[name]
		if !ok {
			t.Errorf("compose.yaml has no service %s", name)
			continue
		}
		if s.Image != image {
			t.Errorf("service %s image %q, want %q", name, s.Image, image)
		}
	}
	if n := p.Services["nats"]; !strings.HasPrefix(n.Image, "nats:") || !slices.Contains(n.Command, "-js") {
		t.Errorf("nats service: image %q command %v; want the nats image with JetStream (-js)", n.Image, n.Command)
	}
	known := knownEnv(t)
	for _, name := range []string{"user", "order", "gateway"} {
		s := p.Services[name]
		if s.Build == nil || s.Build.Context != abs {
			t.Errorf("%s is not built from this repository's Dockerfile: %+v", name, s.Build)
		}
		if want := []string{"run", "--target", name}; !slices.Equal(s.Command, want) {
			t.Errorf("%s command %v, want %v", name, s.Command, want)
		}
		var envNames []string
		for k := range s.Environment {
			envNames = append(envNames, k)
		}
		checkEnv(t, "compose service "+name, envNames, known)
		if s.HealthCheck == nil || !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "trellis healthcheck") {
			t.Errorf("%s health check %v: want trellis healthcheck", name, s.HealthCheck)
		}
	}
	checkComposeIdentity(t, p)
	db := func(s string) string { return *p.Services[s].Environment["DATABASE_URL"] }
	if !strings.Contains(db("user"), "/users?") || !strings.Contains(db("order"), "/orders?") {
		t.Errorf("user and order must use separate databases: %s, %s", db("user"), db("order"))
	}
	for name, s := range p.Services {
		// identity is a one-shot step: others wait for it to complete.
		if !slices.Contains([]string{"otel-collector", "jaeger", "identity"}, name) && (s.HealthCheck == nil || len(s.HealthCheck.Test) == 0) {
			t.Errorf("service %s has no health check", name)
		}
		for dep, d := range s.DependsOn {
			if dep == "identity" && d.Condition == types.ServiceConditionCompletedSuccessfully {
				continue
			}
			if d.Condition != types.ServiceConditionHealthy && dep != "jaeger" {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", name, dep, d.Condition)
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s, which does not exist", name, v.Source)
				}
			}
		}
	}
	for _, pair := range [][2]string{{"order", "user"}, {"gateway", "user"}, {"gateway", "order"}, {"user", "postgres"}, {"user", "nats"}, {"order", "redis"}} {
		if _, ok := p.Services[pair[0]].DependsOn[pair[1]]; !ok {
			t.Errorf("%s does not wait for %s", pair[0], pair[1])
		}
	}
	gw := p.Services["gateway"]
	if len(gw.Ports) != 1 || gw.Ports[0].Published != "8080" || gw.Ports[0].Target != 8080 {
		t.Errorf("gateway ports %+v, want 8080:8080", gw.Ports)
	}
	for _, name := range []string{"prometheus", "grafana", "otel-collector", "jaeger"} {
		if s, ok := p.Services[name]; !ok || !slices.Equal(s.Profiles, []string{"observability"}) {
			t.Errorf("%s should exist in the observability profile only", name)
		}
	}
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	var stages [][]*parser.Node
	for _, n := range res.AST.Children {
		if strings.EqualFold(n.Value, "from") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], n)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	find := func(stage []*parser.Node, instr string) []string {
		var out []string
		for _, n := range stage {
			if strings.EqualFold(n.Value, instr) {
				out = append(out, n.Original)
			}
		}
		return out
	}
	build, runtime := stages[0], stages[len(stages)-1]
	mod, _ := os.ReadFile(filepath.Join(root, "go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(mod))[1]
	if from := find(build, "from"); !strings.Contains(from[0], "golang:"+goVersion) {
		t.Errorf("build stage %q does not use Go %s (go.mod)", from[0], goVersion)
	}
	runs := strings.Join(find(build, "run"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=", "--mount=type=cache,target=/go/pkg/mod", "--mount=type=cache,target=/root/.cache/go-build"} {
		if !strings.Contains(runs, want) {
			t.Errorf("build stage RUN lacks %s", want)
		}
	}
	users := find(runtime, "user")
	if len(users) == 0 {
		t.Fatal("runtime stage has no USER: it would run as root")
	}
	if u := strings.Fields(users[len(users)-1])[1]; u == "root" || u == "0" || strings.HasPrefix(u, "0:") {
		t.Errorf("runtime stage runs as %s", u)
	}
	if hc := find(runtime, "healthcheck"); len(hc) == 0 || !strings.Contains(hc[0], `"healthcheck"`) {
		t.Errorf("runtime HEALTHCHECK %v: want trellis healthcheck", hc)
	}
	if ep := find(runtime, "entrypoint"); len(ep) == 0 || !strings.Contains(ep[0], "trellis") {
		t.Errorf("ENTRYPOINT %v: want the trellis binary", ep)
	}
}

// resources builds a kustomization and decodes every object strictly into
// its Kubernetes API type: an unknown or misspelt field fails the test.
func resources(t *testing.T, dir string) map[string][]any {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out := map[string][]any{}
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var obj any
		switch kind := r.GetKind(); kind {
		case "Deployment":
			obj = &appsv1.Deployment{}
		case "Service":
			obj = &corev1.Service{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "Secret":
			obj = &corev1.Secret{}
		case "PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		case "HorizontalPodAutoscaler":
			obj = &autoscalingv2.HorizontalPodAutoscaler{}
		case "NetworkPolicy":
			obj = &networkingv1.NetworkPolicy{}
		default:
			t.Errorf("%s: unexpected kind %s", dir, kind)
			continue
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Errorf("%s: %s %s does not decode strictly: %v", dir, r.GetKind(), r.GetName(), err)
			continue
		}
		out[r.GetKind()] = append(out[r.GetKind()], obj)
	}
	return out
}

func TestKustomize(t *testing.T) {
	t.Parallel()
	known := knownEnv(t)
	for overlay, replicas := range map[string]int32{"deploy/k8s/overlays/dev": 1, "deploy/k8s/overlays/prod": 3} {
		t.Run(filepath.Base(overlay), func(t *testing.T) {
			t.Parallel()
			objs := resources(t, overlay)
			var cm *corev1.ConfigMap
			for _, o := range objs["ConfigMap"] {
				if c := o.(*corev1.ConfigMap); strings.HasPrefix(c.Name, "trellis-config") {
					cm = c
				}
			}
			if cm == nil {
				t.Fatal("no trellis-config ConfigMap")
			}
			var cmKeys []string
			for k := range cm.Data {
				cmKeys = append(cmKeys, k)
			}
			checkEnv(t, "ConfigMap trellis-config", cmKeys, known)
			deployments := map[string]*appsv1.Deployment{}
			for _, o := range objs["Deployment"] {
				d := o.(*appsv1.Deployment)
				deployments[d.Name] = d
				if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
					t.Errorf("%s replicas %v, want %d", d.Name, d.Spec.Replicas, replicas)
				}
				c := d.Spec.Template.Spec.Containers[0]
				if want := []string{"run", "--target", d.Name}; !slices.Equal(c.Args, want) {
					t.Errorf("%s args %v, want %v", d.Name, c.Args, want)
				}
				if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
					t.Errorf("%s readiness probe %+v, want GET /readyz", d.Name, p)
				}
				if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
					t.Errorf("%s liveness probe %+v, want GET /healthz", d.Name, p)
				}
				if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
					t.Errorf("%s has no cpu request or memory limit", d.Name)
				}
				if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
					t.Errorf("%s may run as root", d.Name)
				}
				var envNames []string
				entitled := false
				for _, e := range c.Env {
					envNames = append(envNames, e.Name)
					// The shedding signal's CPUs: the container's own request, in millicores.
					if r := e.ValueFrom; e.Name == "TRELLIS_SHED_CPU_MILLIS" && r != nil && r.ResourceFieldRef != nil {
						ref := r.ResourceFieldRef
						entitled = ref.Resource == "requests.cpu" && (ref.ContainerName == "" || ref.ContainerName == c.Name) && ref.Divisor.String() == "1m"
					}
				}
				checkEnv(t, "Deployment "+d.Name, envNames, known)
				if !entitled {
					t.Errorf("%s: TRELLIS_SHED_CPU_MILLIS is not its container's requests.cpu in millicores (resourceFieldRef, divisor 1m)", d.Name)
				}
			}
			for _, name := range []string{"user", "order", "gateway"} {
				if deployments[name] == nil {
					t.Errorf("no Deployment %s", name)
				}
			}
			services := map[string]*corev1.Service{}
			for _, o := range objs["Service"] {
				s := o.(*corev1.Service)
				services[s.Name] = s
			}
			if s := services["user"]; s == nil || s.Spec.ClusterIP != corev1.ClusterIPNone {
				t.Errorf("the user Service must be headless (clusterIP: None) so clients balance per request")
			}
			if !strings.HasPrefix(cm.Data["TRELLIS_USER_UPSTREAM"], "dns:///user:") {
				t.Errorf("TRELLIS_USER_UPSTREAM = %q: want dns:///user:9001", cm.Data["TRELLIS_USER_UPSTREAM"])
			}
			for _, kind := range []string{"PodDisruptionBudget", "HorizontalPodAutoscaler"} {
				if len(objs[kind]) != 3 {
					t.Errorf("%d %s objects, want one per component", len(objs[kind]), kind)
				}
			}
			var policies []string
			for _, o := range objs["NetworkPolicy"] {
				policies = append(policies, o.(*networkingv1.NetworkPolicy).Name)
			}
			for _, want := range []string{"default-deny", "gateway-ingress", "user-ingress", "order-ingress"} {
				if !slices.Contains(policies, want) {
					t.Errorf("no NetworkPolicy %s", want)
				}
			}
		})
	}
}

// TestDashboardMetricsExist runs a real trellis, exercises every part,
// and checks that each metric the Grafana dashboard or an alerting rule
// (deploy/prometheus/alerts.yml) queries is exported.
func TestDashboardMetricsExist(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root, "deploy/grafana/dashboards/trellis.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	names := map[string]bool{}
	metricRe := regexp.MustCompile(`\b(?:grpc|http|trellis)_[a-z_]+\b`)
	// Label names appear in by (...) clauses and {...} matchers; drop
	// those before looking for metric names.
	labelsRe := regexp.MustCompile(`by \([^)]*\)|\{[^}]*\}`)
	exprs := []string{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) < 8 {
		t.Fatalf("dashboard has only %d queries", len(exprs))
	}
	for _, g := range loadAlerts(t).Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	for _, e := range exprs {
		for _, m := range metricRe.FindAllString(labelsRe.ReplaceAllString(e, ""), -1) {
			names[m] = true
		}
	}

	cfg := apptest.Config(t, app.TargetAll)
	a := apptest.Start(t, cfg)
	users := userv1.NewUserServiceClient(a.Dial(t, app.TargetUser))
	if _, err := users.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: "dash@example.com", Name: "D", Password: "correct-horse"}); err != nil {
		t.Fatal(err)
	}
	// A call the policy denies, and a handshake without a certificate.
	asOrder, err := grpc.NewClient(a.Addr(app.TargetUser), grpc.WithTransportCredentials(apptest.CredentialsAs(t, cfg, "trellis/order", app.TargetUser)))
	if err != nil {
		t.Fatal(err)
	}
	defer asOrder.Close()
	if _, err := userv1.NewUserServiceClient(asOrder).DeleteUser(context.Background(), &userv1.DeleteUserRequest{Id: "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("order → DeleteUser: %v, want PERMISSION_DENIED", err)
	}
	if resp, err := http.Get("http://" + a.Addr(app.TargetGateway) + "/api/v1/users"); err == nil {
		resp.Body.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + a.Addr("admin") + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for n := range names {
			if !regexp.MustCompile(`(?m)^` + n + `[{ ]`).Match(body) {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(missing)
			t.Fatalf("the dashboard or the alerts query metrics trellis does not export: %v", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkComposeIdentity checks what mTLS and authenticated events need in
// compose: every component mounts the shared identity volume where its
// TRELLIS_IDENTITY_DIR says (one development CA for all), the issuing step
// writes the NATS server's certificate on that volume, NATS reads it from
// the path its configuration names, and that configuration is the one
// `trellis identity nats-config` prints.
func checkComposeIdentity(t *testing.T, p *types.Project) {
	t.Helper()
	mountOf := func(svc, volume string) string {
		for _, v := range p.Services[svc].Volumes {
			if v.Source == volume {
				return v.Target
			}
		}
		return ""
	}
	for _, name := range []string{"user", "order", "gateway", "identity"} {
		dir := p.Services[name].Environment["TRELLIS_IDENTITY_DIR"]
		if dir == nil || mountOf(name, "identity") != *dir {
			t.Errorf("%s: TRELLIS_IDENTITY_DIR %v is not where the identity volume is mounted (%q)", name, dir, mountOf(name, "identity"))
		}
	}
	for _, name := range []string{"user", "order", "gateway"} {
		if u := p.Services[name].Environment["NATS_URL"]; u == nil || !strings.HasPrefix(*u, "tls://") {
			t.Errorf("%s: NATS_URL %v, want tls://", name, u)
		}
	}
	issue := p.Services["identity"].Command
	out := ""
	for i, a := range issue {
		if a == "--out" && i+1 < len(issue) {
			out = issue[i+1]
		}
	}
	if !slices.Contains(issue, "trellis/nats") || out == "" {
		t.Fatalf("identity service %v does not issue trellis/nats with --out", issue)
	}
	rel, ok := strings.CutPrefix(out, mountOf("identity", "identity"))
	if !ok {
		t.Fatalf("identity service writes %s, outside the identity volume", out)
	}
	nats := p.Services["nats"]
	if dep, ok := nats.DependsOn["identity"]; !ok || dep.Condition != "service_completed_successfully" {
		t.Errorf("nats does not wait for the issuing step: %+v", nats.DependsOn)
	}
	conf := ""
	for i, a := range nats.Command {
		if a == "-c" && i+1 < len(nats.Command) {
			conf = nats.Command[i+1]
		}
	}
	var confFile string
	for _, v := range nats.Volumes {
		if v.Target == conf {
			confFile = v.Source
		}
	}
	if confFile == "" {
		t.Fatalf("nats command %v: its -c file is not mounted", nats.Command)
	}
	certs := mountOf("nats", "identity") + rel
	want := app.NATSServerConfig("trellis.local", "", certs+"/svid.pem", certs+"/svid-key.pem", certs+"/bundle.pem")
	got, err := os.ReadFile(confFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not what trellis identity nats-config prints for %s:\n%s", confFile, certs, want)
	}
}
