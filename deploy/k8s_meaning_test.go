package deploy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/app"
)

var overlays = []string{"deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"}

// eachOverlay renders every overlay and runs check on its objects and pod
// templates, as a parallel subtest named after the overlay.
func eachOverlay(t *testing.T, check func(t *testing.T, objs map[string][]any, ps []pod)) {
	for _, overlay := range overlays {
		t.Run(filepath.Base(overlay), func(t *testing.T) {
			t.Parallel()
			objs := resources(t, overlay)
			check(t, objs, pods(objs))
		})
	}
}

// pod is a Deployment's pod template as the rendered overlay runs it.
type pod struct {
	name   string
	labels labels.Set
	ports  []int32
	images []string
}

func pods(objs map[string][]any) []pod {
	var out []pod
	for _, o := range objs["Deployment"] {
		d := o.(*appsv1.Deployment)
		p := pod{name: d.Name, labels: d.Spec.Template.Labels}
		for _, c := range d.Spec.Template.Spec.Containers {
			p.images = append(p.images, c.Image)
			for _, port := range c.Ports {
				p.ports = append(p.ports, port.ContainerPort)
			}
		}
		out = append(out, p)
	}
	return out
}

func selects(t *testing.T, sel *metav1.LabelSelector, p pod) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	return s.Matches(p.labels)
}

// TestEverySelectorSelectsAPod renders each overlay and checks that every
// selector — Deployments', Services', PodDisruptionBudgets',
// NetworkPolicies' (and their same-namespace peers) — matches at least one
// pod template, and every HPA scales a Deployment that exists. A selector
// that matches nothing is silent in Kubernetes: a policy that protects
// nothing, or under default-deny, blocks everything.
func TestEverySelectorSelectsAPod(t *testing.T) {
	t.Parallel()
	eachOverlay(t, func(t *testing.T, objs map[string][]any, ps []pod) {
		any := func(what string, sel *metav1.LabelSelector) {
			t.Helper()
			for _, p := range ps {
				if selects(t, sel, p) {
					return
				}
			}
			t.Errorf("%s: selector %s matches no pod template", what, metav1.FormatLabelSelector(sel))
		}
		for _, o := range objs["Deployment"] {
			d := o.(*appsv1.Deployment)
			if !selects(t, d.Spec.Selector, pod{labels: d.Spec.Template.Labels}) {
				t.Errorf("Deployment %s: selector does not match its own template", d.Name)
			}
		}
		for _, o := range objs["Service"] {
			s := o.(*corev1.Service)
			any("Service "+s.Name, &metav1.LabelSelector{MatchLabels: s.Spec.Selector})
		}
		for _, o := range objs["PodDisruptionBudget"] {
			p := o.(*policyv1.PodDisruptionBudget)
			any("PodDisruptionBudget "+p.Name, p.Spec.Selector)
		}
		for _, o := range objs["HorizontalPodAutoscaler"] {
			h := o.(*autoscalingv2.HorizontalPodAutoscaler)
			if !slices.ContainsFunc(ps, func(p pod) bool { return p.name == h.Spec.ScaleTargetRef.Name }) || h.Spec.ScaleTargetRef.Kind != "Deployment" {
				t.Errorf("HPA %s scales %s/%s, which is not rendered", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
			}
		}
		for _, o := range objs["NetworkPolicy"] {
			np := o.(*networkingv1.NetworkPolicy)
			any("NetworkPolicy "+np.Name, &np.Spec.PodSelector)
			var peers []networkingv1.NetworkPolicyPeer
			for _, r := range np.Spec.Ingress {
				peers = append(peers, r.From...)
			}
			for _, r := range np.Spec.Egress {
				peers = append(peers, r.To...)
			}
			for _, peer := range peers {
				if peer.PodSelector != nil && peer.NamespaceSelector == nil {
					any("NetworkPolicy "+np.Name+" peer", peer.PodSelector)
				}
			}
		}
	})
}

// kustomization is the part of a kustomization.yaml the image check reads.
type kustomization struct {
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
		Digest  string `json:"digest"`
	} `json:"images"`
}

func repo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// TestOverlayImagesArePinnedAndTransformersApply: every images: entry of
// an overlay names an image the base renders (else it silently changes
// nothing), the overlay renders exactly the image it asks for, and no
// overlay runs :latest or an untagged image.
func TestOverlayImagesArePinnedAndTransformersApply(t *testing.T) {
	t.Parallel()
	var baseRepos []string
	for _, p := range pods(resources(t, "deploy/k8s/base")) {
		for _, img := range p.images {
			baseRepos = append(baseRepos, repo(img))
		}
	}
	for _, overlay := range overlays {
		t.Run(filepath.Base(overlay), func(t *testing.T) {
			t.Parallel()
			b, err := os.ReadFile(filepath.Join(root, overlay, "kustomization.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var k kustomization
			if err := yaml.Unmarshal(b, &k); err != nil {
				t.Fatal(err)
			}
			if len(k.Images) == 0 {
				t.Fatal("the overlay sets no image")
			}
			var want []string
			for _, img := range k.Images {
				if !slices.Contains(baseRepos, img.Name) {
					t.Errorf("images: %q matches no image the base renders (%v): the transformer changes nothing", img.Name, baseRepos)
				}
				name := img.Name
				if img.NewName != "" {
					name = img.NewName
				}
				switch {
				case img.Digest != "":
					want = append(want, name+"@"+img.Digest)
				default:
					want = append(want, name+":"+img.NewTag)
				}
			}
			for _, p := range pods(resources(t, overlay)) {
				for _, img := range p.images {
					if !slices.Contains(want, img) {
						t.Errorf("%s runs %s, want one of %v", p.name, img, want)
					}
					if strings.HasSuffix(img, ":latest") || !strings.ContainsAny(img[strings.LastIndex(img, "/")+1:], ":@") {
						t.Errorf("%s runs %s: not pinned", p.name, img)
					}
				}
			}
		})
	}
}

// designCalls is every call between Trellis pods the design makes
// (ARCHITECTURE.md): the REST gateway calls both services, the order
// service calls the user service. When per-method authorization lands
// (grpc/authz, issue 14), its policy is the source of this list.
var designCalls = []string{"gateway->order:9002", "gateway->user:9001", "order->user:9001"}

// peerMatches reports whether a NetworkPolicy peer admits pod p of
// namespace ns.
func peerMatches(t *testing.T, peer networkingv1.NetworkPolicyPeer, ns string, p pod) bool {
	if peer.IPBlock != nil {
		return false // pod-to-pod traffic is judged by selectors
	}
	if peer.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil || !s.Matches(labels.Set{"kubernetes.io/metadata.name": ns}) {
			return false
		}
	}
	return peer.PodSelector == nil || selects(t, peer.PodSelector, p)
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Port == nil || p.Port.IntVal == port {
			return true
		}
	}
	return false
}

// TestNetworkPoliciesAllowExactlyTheDesignedCalls derives, from the
// rendered NetworkPolicies, every pod-to-pod connection they allow inside
// the namespace (both the source's egress and the destination's ingress
// must allow it, as under default-deny) and compares it with the calls the
// design makes: nothing missing, nothing extra.
func TestNetworkPoliciesAllowExactlyTheDesignedCalls(t *testing.T) {
	t.Parallel()
	eachOverlay(t, func(t *testing.T, objs map[string][]any, ps []pod) {
		var nps []*networkingv1.NetworkPolicy
		ns := ""
		for _, o := range objs["NetworkPolicy"] {
			np := o.(*networkingv1.NetworkPolicy)
			nps = append(nps, np)
			ns = np.Namespace
		}
		allowed := func(src, dst pod, port int32) bool {
			in, out := false, false
			for _, np := range nps {
				if selects(t, &np.Spec.PodSelector, dst) {
					for _, r := range np.Spec.Ingress {
						if portMatches(r.Ports, port) && (len(r.From) == 0 || slices.ContainsFunc(r.From, func(peer networkingv1.NetworkPolicyPeer) bool { return peerMatches(t, peer, ns, src) })) {
							in = true
						}
					}
				}
				if selects(t, &np.Spec.PodSelector, src) {
					for _, r := range np.Spec.Egress {
						if portMatches(r.Ports, port) && (len(r.To) == 0 || slices.ContainsFunc(r.To, func(peer networkingv1.NetworkPolicyPeer) bool { return peerMatches(t, peer, ns, dst) })) {
							out = true
						}
					}
				}
			}
			return in && out
		}
		var got []string
		for _, src := range ps {
			for _, dst := range ps {
				for _, port := range dst.ports {
					if src.name != dst.name && allowed(src, dst, port) {
						got = append(got, fmt.Sprintf("%s->%s:%d", src.name, dst.name, port))
					}
				}
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, designCalls) {
			t.Errorf("NetworkPolicies allow %v, the design makes %v", got, designCalls)
		}
		// Each pod may reach DNS and the infrastructure ports, and the
		// monitoring namespace may scrape each admin port.
		for _, p := range ps {
			if !slices.Contains(p.ports, 9090) {
				t.Errorf("%s exposes no admin port 9090", p.name)
			}
		}
	})
}

// TestEveryPodHasAWorkloadIdentity checks what mTLS needs in a cluster:
// each Trellis container takes its identity from the SPIFFE Workload API
// (the ConfigMap it reads says so), and the socket that names is mounted
// from the SPIFFE CSI driver, read-only. A pod without it would fall back
// to a development CA of its own and trust nobody.
func TestEveryPodHasAWorkloadIdentity(t *testing.T) {
	eachOverlay(t, func(t *testing.T, objs map[string][]any, _ []pod) {
		cms := map[string]map[string]string{}
		for _, o := range objs["ConfigMap"] {
			cm := o.(*corev1.ConfigMap)
			cms[cm.Name] = cm.Data
		}
		for _, o := range objs["Deployment"] {
			d := o.(*appsv1.Deployment)
			csiVolumes := map[string]bool{}
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.CSI != nil && v.CSI.Driver == "csi.spiffe.io" && v.CSI.ReadOnly != nil && *v.CSI.ReadOnly {
					csiVolumes[v.Name] = true
				}
			}
			for _, c := range d.Spec.Template.Spec.Containers {
				env := map[string]string{}
				for _, ef := range c.EnvFrom {
					if ef.ConfigMapRef != nil {
						for k, v := range cms[ef.ConfigMapRef.Name] {
							env[k] = v
						}
					}
				}
				for _, e := range c.Env {
					env[e.Name] = e.Value
				}
				if env["TRELLIS_IDENTITY_SOURCE"] != "spiffe" || env["TRELLIS_INSECURE_PLAINTEXT"] == "true" {
					t.Errorf("%s/%s: identity source %q, want spiffe (mTLS on)", d.Name, c.Name, env["TRELLIS_IDENTITY_SOURCE"])
					continue
				}
				sock, ok := strings.CutPrefix(env["SPIFFE_ENDPOINT_SOCKET"], "unix://")
				if !ok {
					t.Errorf("%s/%s: SPIFFE_ENDPOINT_SOCKET %q is not a unix socket", d.Name, c.Name, env["SPIFFE_ENDPOINT_SOCKET"])
					continue
				}
				mounted := false
				for _, m := range c.VolumeMounts {
					if csiVolumes[m.Name] && m.ReadOnly && filepath.Dir(sock) == filepath.Clean(m.MountPath) {
						mounted = true
					}
				}
				if !mounted {
					t.Errorf("%s/%s: the Workload API socket %s is not on a read-only csi.spiffe.io mount", d.Name, c.Name, sock)
				}
			}
		}
	})
}

// TestNATSValuesEnforceTheEventPermissions reads the NATS Helm values and
// checks they secure the broker as the embedded server does: client TLS
// required and mapped by certificate (verify_and_map), a trust bundle, and
// exactly the users and permissions of app.NATSUsers — so only the user
// service may publish user events — and that Trellis connects with TLS.
func TestNATSValuesEnforceTheEventPermissions(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root, "deploy/k8s/nats/values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type perm struct {
		Allow []string `json:"allow"`
	}
	var v struct {
		TLSCA struct {
			Enabled    bool   `json:"enabled"`
			SecretName string `json:"secretName"`
		} `json:"tlsCA"`
		Config struct {
			NATS struct {
				TLS struct {
					Enabled    bool   `json:"enabled"`
					SecretName string `json:"secretName"`
					Merge      struct {
						VerifyAndMap bool `json:"verify_and_map"`
					} `json:"merge"`
				} `json:"tls"`
			} `json:"nats"`
			Merge struct {
				Authorization struct {
					Users []struct {
						User        string `json:"user"`
						Permissions struct {
							Publish   perm `json:"publish"`
							Subscribe perm `json:"subscribe"`
						} `json:"permissions"`
					} `json:"users"`
				} `json:"authorization"`
			} `json:"merge"`
		} `json:"config"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil { // the chart's other keys are its business
		t.Fatal(err)
	}
	tls := v.Config.NATS.TLS
	if !tls.Enabled || tls.SecretName == "" || !tls.Merge.VerifyAndMap || !v.TLSCA.Enabled || v.TLSCA.SecretName == "" {
		t.Errorf("NATS client TLS: %+v, CA %+v; want TLS on, verify_and_map, a trust bundle", tls, v.TLSCA)
	}
	want := map[string][2][]string{}
	for _, u := range app.NATSUsers("trellis.local", "") {
		want[u.Username] = [2][]string{u.Permissions.Publish.Allow, u.Permissions.Subscribe.Allow}
	}
	got := map[string][2][]string{}
	for _, u := range v.Config.Merge.Authorization.Users {
		got[u.User] = [2][]string{u.Permissions.Publish.Allow, u.Permissions.Subscribe.Allow}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("NATS users in the Helm values:\n%v\nwant (app.NATSUsers):\n%v", got, want)
	}
	cm, err := os.ReadFile(filepath.Join(root, "deploy/k8s/base/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cm), "NATS_URL: tls://") {
		t.Error("the ConfigMap's NATS_URL is not tls://")
	}
}

// TestManifestsHaveTheShapeChaosClusterProved: what `make chaos-cluster`
// ran on separate hosts is what the manifests ask of Kubernetes — user and
// order with at least two replicas spread over nodes (the spread selects
// their own pods), a PodDisruptionBudget keeping one, headless Services so
// dns:///user:9001 returns every pod (outlier ejection needs to see each
// replica); NATS as a 3-node cluster with the streams' replica count,
// routes over TLS, every write synced before it is acknowledged.
func TestManifestsHaveTheShapeChaosClusterProved(t *testing.T) {
	t.Parallel()
	eachOverlay(t, func(t *testing.T, objs map[string][]any, ps []pod) {
		for _, name := range []string{"user", "order"} {
			var d *appsv1.Deployment
			for _, o := range objs["Deployment"] {
				if o.(*appsv1.Deployment).Name == name {
					d = o.(*appsv1.Deployment)
				}
			}
			if d == nil {
				t.Fatalf("no Deployment %s", name)
			}
			self := pod{labels: d.Spec.Template.Labels}
			// The dev overlay runs one of each on purpose; the shape that
			// survives a lost node is production's.
			prod := !strings.HasSuffix(t.Name(), "/dev")
			if prod && (d.Spec.Replicas == nil || *d.Spec.Replicas < 2) {
				t.Errorf("%s: fewer than 2 replicas", name)
			}
			spread := false
			for _, c := range d.Spec.Template.Spec.TopologySpreadConstraints {
				spread = spread || c.TopologyKey == "kubernetes.io/hostname" && c.MaxSkew == 1 && c.LabelSelector != nil && selects(t, c.LabelSelector, self)
			}
			if !spread {
				t.Errorf("%s: replicas are not spread over nodes (topologySpreadConstraints on kubernetes.io/hostname selecting its pods)", name)
			}
			pdb := false
			for _, o := range objs["PodDisruptionBudget"] {
				p := o.(*policyv1.PodDisruptionBudget)
				pdb = pdb || selects(t, p.Spec.Selector, self) && p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() >= 1
			}
			if prod && !pdb {
				t.Errorf("%s: no PodDisruptionBudget keeping a replica", name)
			}
			headless := false
			for _, o := range objs["Service"] {
				s := o.(*corev1.Service)
				headless = headless || s.Name == name && s.Spec.ClusterIP == corev1.ClusterIPNone && selects(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, self)
			}
			if !headless {
				t.Errorf("%s: no headless Service named %s: dns:///%s resolves to one virtual IP and the mesh cannot see (or eject) replicas", name, name, name)
			}
		}
	})

	b, err := os.ReadFile(filepath.Join(root, "deploy/k8s/nats/values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Config struct {
			Cluster struct {
				Enabled  bool `json:"enabled"`
				Replicas int  `json:"replicas"`
				TLS      struct {
					Enabled bool `json:"enabled"`
				} `json:"tls"`
			} `json:"cluster"`
			JetStream struct {
				Merge struct {
					SyncInterval string `json:"sync_interval"`
				} `json:"merge"`
			} `json:"jetstream"`
		} `json:"config"`
		PodTemplate struct {
			TopologySpreadConstraints map[string]any `json:"topologySpreadConstraints"`
		} `json:"podTemplate"`
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	cm, err := os.ReadFile(filepath.Join(root, "deploy/k8s/base/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := v.Config
	if !c.Cluster.Enabled || c.Cluster.Replicas != 3 || !strings.Contains(string(cm), fmt.Sprintf("TRELLIS_NATS_REPLICAS: %q", fmt.Sprint(c.Cluster.Replicas))) {
		t.Errorf("NATS cluster %+v; want 3 nodes and TRELLIS_NATS_REPLICAS equal to them", c.Cluster)
	}
	if !c.Cluster.TLS.Enabled {
		t.Error("NATS routes are not TLS")
	}
	if c.JetStream.Merge.SyncInterval != "always" {
		t.Errorf("JetStream sync_interval %q; want always (docs/consistency.md)", c.JetStream.Merge.SyncInterval)
	}
	if _, ok := v.PodTemplate.TopologySpreadConstraints["kubernetes.io/hostname"]; !ok {
		t.Error("NATS nodes are not spread over Kubernetes nodes")
	}
}
