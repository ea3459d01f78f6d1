package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/trellis-mesh/trellis/gateway"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

// route is one REST route of gateway/http.yaml (and the overview).
type route struct{ method, template string }

var ruleRe = regexp.MustCompile(`(?m)^\s*-?\s*(get|post|patch|delete): (/api/\S+)`)

// routes reads every route from gateway/http.yaml, so a new route is
// attacked without anyone remembering to add it here.
func routes(t testing.TB) []route {
	t.Helper()
	b, err := os.ReadFile("../../gateway/http.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []route
	for _, m := range ruleRe.FindAllStringSubmatch(string(b), -1) {
		out = append(out, route{strings.ToUpper(m[1]), m[2]})
	}
	if len(out) < 10 {
		t.Fatalf("found %d routes in http.yaml", len(out))
	}
	return append(out, route{"GET", "/api/v1/users/{id}:overview"}, route{"HEAD", "/api/v1/users/{id}"},
		route{"GET", "/.well-known/jwks.json"}, route{"GET", "/api/docs"}, route{"GET", "/api/openapi.json"})
}

var paramRe = regexp.MustCompile(`\{[^}]+\}`)

// The classes of bad input the issue found, and their siblings. Path
// values are as they go on the wire (percent-encoded where needed).
var (
	pathValues = []string{
		"", "%ff", "%ff%fe", "%00", "%c0%af", "%c3%28", "%ed%a0%80", "%e2%80%ae", "%e2%80%8b", "%ef%bb%bf",
		"%0d%0aX-Injected:%201", "..%2f..%2fetc%2fpasswd", "a", "1", "-1", "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90",
		"0192F7A4-7C4E-7D1A-9B7E-2F5C3A1D8E90", "%7Bid%7D", "'%20OR%201=1--", strings.Repeat("a", 4000), "%25", "%",
	}
	queries = []string{
		"", "pageSize=-1", "pageSize=abc", "pageSize=99999999999999999999", "pageSize=1e3", "pageSize=%ff",
		"pageToken=%ff", "pageToken=garbage", "pageToken=eyJ4IjoxfQ", "page_token=%00", "userId=%00", "userId=%e2%80%ae",
		"ids=x&ids=%ff", "ids=" + strings.Repeat("0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90&ids=", 150) + "x", "unknown=1",
		"%ff=1", "pageSize=1&pageSize=2", "user.id=x", "etag=%ff", "a=%zz",
	}
	bodies = []string{
		"", "{", "}", "[]", "null", "1", `"s"`, "{}{}", `{} garbage`, `{"a":1}`, `{"email":1}`, `{"email":null}`,
		`{"name":"\u0000"}`, `{"name":"a\u202eb"}`, `{"email":"\ud800@example.com"}`, "{\"name\":\"\xff\xfe\"}",
		`{"email":"ada@example.com","name":"Ada","password":"correct-horse"}`,
		`{"email":"ａｄａ@example.com","name":"Ada","password":"correct-horse"}`,
		`{"userId":"0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90","requestId":"r","items":[{"productId":"p","quantity":1e400,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`,
		`{"userId":"0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90","requestId":"r","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"ABC","amountMinor":"99999999999999999999"}}]}`,
		`{"items":[` + strings.Repeat(`{"productId":"p"},`, 5000) + `{}]}`,
		strings.Repeat("[", 100000), `{"etag":"` + strings.Repeat("v", 1000) + `"}`, `{"updateMask":"email,password"}`,
		"\x1f\x8b\x08\x00\x00\x00\x00\x00", `{"name":"` + strings.Repeat("\\u0000", 5000) + `"}`,
	}
	// Leaks that must never reach a client.
	// ifMatch are the If-Match values a client may send (the etag
	// precondition of PATCH, DELETE and :cancel).
	ifMatch = []string{"*", `"v1"`, `W/"v1"`, "v0", `"v-1"`, `"v99999999999999999999"`, `""`, "garbage", strings.Repeat("v", 8000), "\u202e"}
	// Headers the gateway reads, as name and value: a client's own
	// deadline (gRPC's encoding, which grpc-gateway applies), the request
	// id, the trace context, the token, the body's content coding.
	headers = [][2]string{
		{"Grpc-Timeout", "1n"}, {"Grpc-Timeout", "1u"}, {"Grpc-Timeout", "1m"}, {"Grpc-Timeout", "0n"},
		{"Grpc-Timeout", "99999999H"}, {"Grpc-Timeout", "18446744073709551616n"}, {"Grpc-Timeout", "-5S"},
		{"Grpc-Timeout", "5"}, {"Grpc-Timeout", "S"}, {"Grpc-Timeout", "1x"}, {"Grpc-Timeout", "+1S"}, {"Grpc-Timeout", "\u0661S"},
		{"X-Request-Id", strings.Repeat("r", 8000)}, {"X-Request-Id", "\u202e"}, {"X-Request-Id", " "},
		{"Traceparent", "00-" + strings.Repeat("0", 32) + "-" + strings.Repeat("0", 16) + "-01"}, {"Traceparent", "ff-junk"},
		{"Tracestate", strings.Repeat("a=b,", 2000)},
		{"Authorization", "Bearer"}, {"Authorization", "Bearer " + strings.Repeat("x", 5000)}, {"Authorization", "Basic Zm9vOmJhcg=="},
		{"Content-Encoding", "gzip"}, {"Content-Encoding", "identity, br"}, {"Content-Encoding", ","}, {"Content-Encoding", "\u202e"},
		{"Content-Encoding", strings.Repeat("identity,", 4000)}, {"Content-Encoding", strings.Repeat("identity,", 4000) + "gzip"},
	}
	leaks = []string{"proto:", "grpc:", "strconv", "sql", "SQL", "panic", "goroutine", "runtime error", "utf8", "invalid syntax", "127.0.0.1", "dial tcp", "invalid character", "looking for beginning"}
)

// restClient sends requests without Go's client tidying them: the path
// goes out as written.
var restClient = &http.Client{Timeout: 10 * time.Second}

// checkREST sends one request (with header as name, value pairs) and
// fails the test if the answer is a 5xx, an error without the JSON error
// shape, or leaks internals.
func checkREST(t testing.TB, s *system, method, path, body string, header ...string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.http+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = "//" + s.http + path // raw: keep the client's encoding
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	// As a signed-in user, so that input reaches validation and the
	// services, not only the 401 of an anonymous caller.
	_, tok := s.signedIn(t)
	req.Header.Set("Authorization", "Bearer "+tok)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	_, unparsable := url.ParseRequestURI(path)
	resp, err := restClient.Do(req)
	if err != nil {
		if unparsable != nil {
			// net/http answers a request-URI it cannot parse with 400 and
			// closes the connection, which can reset a body still being sent.
			return
		}
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	what := fmt.Sprintf("%s %.200s body %.200q", method, path, body)
	if resp.StatusCode >= 500 {
		t.Errorf("%s: %d %s", what, resp.StatusCode, b)
		return
	}
	for _, l := range leaks {
		if bytes.Contains(b, []byte(l)) {
			t.Errorf("%s: answer leaks %q: %.300s", what, l, b)
		}
	}
	if resp.StatusCode >= 400 && method != http.MethodHead && unparsable == nil { // net/http itself answers a request-URI it cannot parse
		var e struct {
			Code    *int    `json:"code"`
			Message *string `json:"message"`
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Code == nil || e.Message == nil {
			t.Errorf("%s: %d without the JSON error shape: %.300s", what, resp.StatusCode, b)
		} else if len(*e.Message) > gateway.MaxErrorMessageBytes+len("\u2026") {
			t.Errorf("%s: %d with a message of %d bytes: %.300s", what, resp.StatusCode, len(*e.Message), b)
		}
	}
}

// fill replaces each {param} of a route template.
func fill(template string, value func() string) string {
	return paramRe.ReplaceAllStringFunc(template, func(string) string { return value() })
}

// services are the gRPC services and where they listen.
func services(s *system) []addressedService {
	return []addressedService{
		{s.user, userv1.File_trellis_user_v1_user_proto.Services().Get(0)},
		{s.user, userv1.File_trellis_user_v1_auth_proto.Services().Get(0)},
		{s.order, orderv1.File_trellis_order_v1_order_proto.Services().Get(0)},
	}
}

// addressedService is a service and where it is served.
type addressedService struct {
	addr string
	sd   protoreflect.ServiceDescriptor
}

// serverFaults are the codes a client's mistake must never produce.
var serverFaults = map[codes.Code]bool{codes.Internal: true, codes.Unknown: true, codes.DataLoss: true,
	codes.Unavailable: true, codes.DeadlineExceeded: true, codes.ResourceExhausted: true}

// checkGRPC sends raw bytes as the request of method and fails the test
// if the answer is a server fault or leaks internals.
func checkGRPC(t testing.TB, conn *grpc.ClientConn, method string, raw []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	err := conn.Invoke(ctx, method, &raw, &out, grpc.ForceCodecV2(testenv.RawCodec{}))
	st := status.Convert(err)
	if serverFaults[st.Code()] {
		t.Errorf("%s with %.120x: %v", method, raw, err)
	}
	for _, l := range leaks {
		if strings.Contains(st.Message(), l) {
			t.Errorf("%s: message leaks %q: %s", method, l, st.Message())
		}
	}
}

// nastyStrings are valid UTF-8 (protobuf can encode them) but every
// class of trouble; invalid UTF-8 goes in as raw bytes.
var nastyStrings = []string{"", "a", "\x00", "a\x00b", "\u202e", "\u200b", "\ufeff", "ａｄａ@example.com", "e\u0301", "\U0001F600",
	"0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", "ada@example.com", "EUR", "XXX", "eur", "email", "name", "password", "etag", "v1", "v0",
	strings.Repeat("x", 300), strings.Repeat("é", 201), "' OR 1=1--", "%ff", "\r\n", "*"}

// randomMessage fills a message of descriptor md with random, often
// boundary, values, recursing at most depth levels.
func randomMessage(rng *rand.Rand, md protoreflect.MessageDescriptor, depth int) *dynamicpb.Message {
	m := dynamicpb.NewMessage(md)
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if rng.IntN(4) == 0 {
			continue // leave some fields unset
		}
		if fd.IsList() {
			l := m.Mutable(fd).List()
			n := []int{0, 1, 2, 3, 101, 1001}[rng.IntN(6)]
			if fd.Kind() == protoreflect.MessageKind && n > 101 {
				n = 101
			}
			for range n {
				if v, ok := randomValue(rng, fd, depth); ok {
					l.Append(v)
				}
			}
			continue
		}
		if v, ok := randomValue(rng, fd, depth); ok {
			m.Set(fd, v)
		}
	}
	return m
}

func randomValue(rng *rand.Rand, fd protoreflect.FieldDescriptor, depth int) (protoreflect.Value, bool) {
	ints := []int64{0, 1, -1, 2, 999, 1000, 1001, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64, 1_000_000_000_000, 1_000_000_000_001}
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(nastyStrings[rng.IntN(len(nastyStrings))]), true
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(ints[rng.IntN(len(ints))])), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(ints[rng.IntN(len(ints))]), true
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(ints[rng.IntN(len(ints))])), true
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(rng.IntN(2) == 0), true
	case protoreflect.MessageKind:
		if depth <= 0 {
			return protoreflect.Value{}, false
		}
		return protoreflect.ValueOfMessage(randomMessage(rng, fd.Message(), depth-1)), true
	}
	return protoreflect.Value{}, false
}

// mutate damages an encoding: truncation, a flipped byte, invalid UTF-8
// spliced into a string field, a huge length, bytes appended.
func mutate(rng *rand.Rand, b []byte) []byte {
	b = append([]byte(nil), b...)
	switch rng.IntN(6) {
	case 0:
		if len(b) > 0 {
			b = b[:rng.IntN(len(b))]
		}
	case 1:
		if len(b) > 0 {
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		}
	case 2:
		b = protowire.AppendTag(b, protowire.Number(1+rng.IntN(4)), protowire.BytesType)
		b = protowire.AppendBytes(b, []byte{0xff, 0xfe, 'a'})
	case 3:
		b = protowire.AppendTag(b, protowire.Number(1+rng.IntN(4)), protowire.BytesType)
		b = protowire.AppendVarint(b, 1<<40)
	case 4:
		for range rng.IntN(64) {
			b = append(b, byte(rng.IntN(256)))
		}
	}
	return b
}

// seed is the generator's seed: HOSTILE_SEED to replay a failure, else
// the clock (logged).
func seed(t testing.TB) uint64 {
	if v, err := strconv.ParseUint(os.Getenv("HOSTILE_SEED"), 10, 64); err == nil {
		return v
	}
	v := uint64(time.Now().UnixNano())
	t.Logf("HOSTILE_SEED=%d", v)
	return v
}

// TestGeneratedInputsNeverFaultTheServer sends, through REST and gRPC,
// every class of bad input above to every route and every RPC, then
// hundreds of generated ones; no answer is a server fault, no breaker
// opens, /readyz stays ready and the process stays within GrowthBound.
func TestGeneratedInputsNeverFaultTheServer(t *testing.T) {
	s := start(t)
	rng := rand.New(rand.NewPCG(seed(t), 7))
	time.Sleep(200 * time.Millisecond)
	base := s.rss(t)
	stop := make(chan struct{})
	peak := s.peakRSS(t, stop)

	// REST: every route with every class of path value, query and body.
	for _, r := range routes(t) {
		for _, v := range pathValues {
			checkREST(t, s, r.method, fill(r.template, func() string { return v }), "")
		}
		for _, q := range queries {
			checkREST(t, s, r.method, fill(r.template, func() string { return "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90" })+"?"+q, "")
		}
		if r.method == "POST" || r.method == "PATCH" {
			for _, b := range bodies {
				checkREST(t, s, r.method, fill(r.template, func() string { return "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90" }), b)
			}
		}
		for _, m := range ifMatch {
			checkREST(t, s, r.method, fill(r.template, func() string { return "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90" }), `{"name":"N"}`, "If-Match", m)
		}
		for _, h := range headers {
			checkREST(t, s, r.method, fill(r.template, func() string { return "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90" }), `{"name":"N"}`, h[0], h[1])
		}
	}
	// REST, generated: random combinations, from several clients at once.
	rs := routes(t)
	var wg sync.WaitGroup
	var mu sync.Mutex // rng
	for range 4 {
		wg.Go(func() {
			for range 150 {
				mu.Lock()
				r := rs[rng.IntN(len(rs))]
				path := fill(r.template, func() string { return pathValues[rng.IntN(len(pathValues))] })
				if rng.IntN(2) == 0 {
					path += "?" + queries[rng.IntN(len(queries))] + "&" + queries[rng.IntN(len(queries))]
				}
				body := ""
				if r.method == "POST" || r.method == "PATCH" {
					body = bodies[rng.IntN(len(bodies))]
					if rng.IntN(3) == 0 && len(body) > 2 {
						cut := rng.IntN(len(body))
						body = body[:cut] + string(rune(rng.IntN(0x3000))) + body[cut:]
					}
				}
				mu.Unlock()
				checkREST(t, s, r.method, path, body)
			}
		})
	}
	wg.Wait()

	// gRPC: every RPC, generated messages and damaged encodings of them.
	for _, as := range services(s) {
		addr, sd := as.addr, as.sd
		conn := s.dial(t, addr)
		methods := sd.Methods()
		for i := range methods.Len() {
			md := methods.Get(i)
			name := "/" + string(sd.FullName()) + "/" + string(md.Name())
			for range 60 {
				msg := randomMessage(rng, md.Input(), 3)
				b, err := proto.Marshal(msg)
				if err != nil {
					t.Fatal(err)
				}
				checkGRPC(t, conn, name, b)
				checkGRPC(t, conn, name, mutate(rng, b))
			}
		}
	}
	close(stop)
	if grew := <-peak - base; grew > GrowthBound {
		t.Errorf("the process grew by %.1f MiB, over the %d MiB bound", float64(grew)/(1<<20), GrowthBound>>20)
	}
	s.healthy(t)
}

// FuzzREST lets `go test -fuzz FuzzREST ./internal/hostile` search for
// a request the gateway answers with a 5xx; the seeds are the classes
// above, so plain `go test` runs them all as a regression suite.
func FuzzREST(f *testing.F) {
	for i := range max(len(pathValues), len(queries), len(bodies)) {
		f.Add(uint8(i), pathValues[i%len(pathValues)], queries[i%len(queries)], bodies[i%len(bodies)])
	}
	s := start(f)
	rs := routes(f)
	f.Fuzz(func(t *testing.T, ri uint8, value, query, body string) {
		r := rs[int(ri)%len(rs)]
		path := fill(r.template, func() string { return escapeSome(value) })
		if query != "" {
			path += "?" + escapeSome(query)
		}
		checkREST(t, s, r.method, path, body)
	})
}

// rpc is one method of a served service and a connection to it.
type rpc struct {
	method string
	conn   *grpc.ClientConn
}

// everyRPC lists every method of every service s serves, with one
// connection per address.
func everyRPC(t testing.TB, s *system) []rpc {
	conns := map[string]*grpc.ClientConn{}
	var rpcs []rpc
	for _, as := range services(s) {
		if conns[as.addr] == nil {
			conns[as.addr] = s.dial(t, as.addr)
		}
		for i := range as.sd.Methods().Len() {
			rpcs = append(rpcs, rpc{"/" + string(as.sd.FullName()) + "/" + string(as.sd.Methods().Get(i).Name()), conns[as.addr]})
		}
	}
	return rpcs
}

// FuzzGRPC does the same for raw request bytes of every RPC.
func FuzzGRPC(f *testing.F) {
	f.Add(uint8(0), []byte{0x0a, 2, 0xff, 0xfe})
	f.Add(uint8(1), []byte{0x08})
	f.Add(uint8(2), []byte{0x0b})
	f.Add(uint8(3), []byte{0x0a, 100, 'a'})
	s := start(f)
	rpcs := everyRPC(f, s)
	f.Fuzz(func(t *testing.T, mi uint8, raw []byte) {
		r := rpcs[int(mi)%len(rpcs)]
		checkGRPC(t, r.conn, r.method, raw)
	})
}

// escapeSome percent-encodes bytes a URL cannot carry as they are, so the
// fuzzer's strings reach the server as values, not as broken requests.
func escapeSome(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '#' || c == '?' || c == '/' && i == 0 {
			fmt.Fprintf(&b, "%%%02x", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// FuzzGRPCMetadata sends every RPC an empty request with one metadata
// entry a client chose (a token, a request id, trace context, a binary
// header, anything): never a server fault, never leaked internals.
// Run longer with: go test -fuzz FuzzGRPCMetadata ./internal/hostile
func FuzzGRPCMetadata(f *testing.F) {
	for _, kv := range [][2]string{
		{"authorization", "Bearer"}, {"authorization", "Bearer " + strings.Repeat("x", 5000)}, {"authorization", "Basic Zm9v"},
		{"authorization", "bearer eyJhbGciOiJub25lIn0.e30."}, {"x-request-id", strings.Repeat("r", 200)}, {"x-request-id", "\x7f"},
		{"traceparent", "00-" + strings.Repeat("f", 32) + "-" + strings.Repeat("f", 16) + "-ff"}, {"traceparent", "junk"},
		{"tracestate", strings.Repeat("k=v,", 100)}, {"x-bin", "\xff\x00"}, {"trellis-principal", "admin"}, {"x-forwarded-for", "1.2.3.4"},
		{"content-type", "application/grpc+json"}, {"user-agent", "\u202e"},
	} {
		f.Add(uint8(0), kv[0], kv[1])
		f.Add(uint8(7), kv[0], kv[1])
	}
	s := start(f)
	rpcs := everyRPC(f, s)
	f.Fuzz(func(t *testing.T, mi uint8, key, value string) {
		r := rpcs[int(mi)%len(rpcs)]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, key, value)
		raw, out := []byte{}, []byte{}
		err := r.conn.Invoke(ctx, r.method, &raw, &out, grpc.ForceCodecV2(testenv.RawCodec{}))
		st := status.Convert(err)
		if st.Code() == codes.Internal && (strings.Contains(st.Message(), "header key") || strings.Contains(st.Message(), "metadata")) {
			return // grpc-go refused to send it (an invalid key or value): nothing reached the server
		}
		if serverFaults[st.Code()] {
			t.Errorf("%s with %q: %q: %v", r.method, key, value, err)
		}
		for _, l := range leaks {
			if strings.Contains(st.Message(), l) {
				t.Errorf("%s with %q: %q: message leaks %q: %s", r.method, key, value, l, st.Message())
			}
		}
	})
}
