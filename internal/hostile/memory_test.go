package hostile

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// GrowthBound is what one client may make a Trellis process grow by,
// whatever it sends (README, "Limits"; docs/resilience.md).
const GrowthBound = 64 << 20

// h2 is a raw HTTP/2 client that speaks gRPC's framing but none of its
// manners: it never grants the server flow-control window and never
// reads what it is sent, beyond acknowledging settings.
type h2 struct {
	t    *testing.T
	c    net.Conn
	mu   sync.Mutex // serialises frame writes
	fr   *http2.Framer
	next uint32

	wmu    sync.Mutex
	window map[uint32]int64 // send window per stream (0: the connection)
	cond   *sync.Cond
}

func dialH2(t *testing.T, s *system, addr string) *h2 {
	t.Helper()
	cfg := s.tlsConfig(t, addr)
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2{t: t, c: c, fr: http2.NewFramer(c, c), next: 1, window: map[uint32]int64{0: 65535}}
	h.cond = sync.NewCond(&h.wmu)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	// A window of 0: the server may not send a byte of any answer.
	if err := h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	go h.read()
	// Wake senders now and then, so a stalled send can give up.
	go func() {
		for {
			time.Sleep(100 * time.Millisecond)
			h.wmu.Lock()
			gone := h.window == nil
			h.cond.Broadcast()
			h.wmu.Unlock()
			if gone {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return h
}

// read handles the frames the server sends: settings and pings are
// acknowledged (so the server's keepalive keeps the connection), window
// updates recorded (so requests can be sent); answers are dropped unread.
func (h *h2) read() {
	rd := http2.NewFramer(nil, h.c)
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			h.wmu.Lock()
			h.window = nil // connection gone: senders stop
			h.cond.Broadcast()
			h.wmu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.mu.Lock()
				_ = h.fr.WriteSettingsAck()
				h.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				h.mu.Lock()
				_ = h.fr.WritePing(true, f.Data)
				h.mu.Unlock()
			}
		case *http2.WindowUpdateFrame:
			h.wmu.Lock()
			if h.window != nil {
				h.window[f.StreamID] += int64(f.Increment)
			}
			h.cond.Broadcast()
			h.wmu.Unlock()
		}
	}
}

// call opens a stream for a gRPC method with extra headers; it returns
// the stream id, or 0 if the connection is gone.
func (h *h2) call(method string, extra ...hpack.HeaderField) uint32 {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	enc.SetMaxDynamicTableSizeLimit(0)
	for _, hf := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: method},
		{Name: ":authority", Value: "trellis"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...) {
		_ = enc.WriteField(hf)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	id := h.next
	h.next += 2
	h.wmu.Lock()
	if h.window == nil {
		h.wmu.Unlock()
		return 0
	}
	h.window[id] = 65535
	h.wmu.Unlock()
	block := buf.Bytes()
	const frag = 16 << 10
	first := block[:min(frag, len(block))]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(block) <= frag}); err != nil {
		return 0
	}
	for rest := block[len(first):]; len(rest) > 0; {
		n := min(frag, len(rest))
		if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return 0
		}
		rest = rest[n:]
	}
	return id
}

// send writes b on stream id within the flow-control windows the server
// granted, waiting up to 3 s for more as needed; end closes the request.
func (h *h2) send(id uint32, b []byte, end bool) bool {
	deadline := time.Now().Add(3 * time.Second)
	for {
		h.wmu.Lock()
		for h.window != nil && len(b) > 0 && (h.window[0] <= 0 || h.window[id] <= 0) && time.Now().Before(deadline) {
			h.cond.Wait()
		}
		if h.window == nil || !time.Now().Before(deadline) {
			h.wmu.Unlock()
			return false
		}
		n := min(int64(len(b)), h.window[0], h.window[id], 16<<10)
		h.window[0] -= n
		h.window[id] -= n
		h.wmu.Unlock()
		last := int(n) == len(b)
		h.mu.Lock()
		err := h.fr.WriteData(id, end && last, b[:n])
		h.mu.Unlock()
		if err != nil {
			return false
		}
		if b = b[n:]; last {
			return true
		}
	}
}

// grpcFrame is a gRPC length-prefixed message of n bytes declared, with
// body as its start.
func grpcFrame(declared int, body []byte) []byte {
	out := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(out[1:], uint32(declared))
	return append(out, body...)
}

// TestOneClientCannotGrowAProcessPastTheBound attacks one `trellis run`
// at once with what earlier cost hundreds of MB: calls carrying 15 MiB of
// metadata, answers (list pages) the client never reads on every stream
// a connection may open and more, and requests declared large and never
// finished. The process's RSS, sampled all along, grows by less than
// GrowthBound, a normal client is served during the attack, and the
// process is healthy after it.
func TestOneClientCannotGrowAProcessPastTheBound(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	uid, tok := s.signedIn(t)
	users, orders := userv1.NewUserServiceClient(s.dial(t, s.user)), orderv1.NewOrderServiceClient(s.dial(t, s.order))
	lines := make([]*orderv1.OrderItem, 100)
	for i := range lines {
		lines[i] = &orderv1.OrderItem{ProductId: strings.Repeat("p", 96) + strconv.Itoa(1000+i), Quantity: 1,
			UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 1}}
	}
	for i := range 25 { // ~340 KB: every list page is as large as pages get
		if _, err := orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: uid, RequestId: strconv.Itoa(i), Items: lines}); err != nil {
			t.Fatal(err)
		}
	}
	list, _ := proto.Marshal(&orderv1.ListOrdersRequest{UserId: uid, PageSize: 1000})
	// Warm up the paths the attack uses, then take the baseline.
	for range 20 {
		if _, err := orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: uid, PageSize: 1000}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	base := s.rss(t)

	stop := make(chan struct{})
	peak := s.peakRSS(t, stop)
	var wg sync.WaitGroup
	// 1. 20 calls with 15 MiB of metadata each, each on its own connection.
	for range 20 {
		wg.Go(func() {
			h := dialH2(t, s, s.user)
			big := strings.Repeat("x", 15<<20)
			if id := h.call("/trellis.user.v1.UserService/GetUser", hpack.HeaderField{Name: "x-big", Value: big}); id != 0 {
				h.send(id, grpcFrame(0, nil), true)
			}
		})
	}
	// 2. Answers never read: list pages on every stream one connection may
	// open, and 36 more, on the order port.
	h := dialH2(t, s, s.order)
	for range 100 {
		if id := h.call("/trellis.order.v1.OrderService/ListOrders", hpack.HeaderField{Name: "authorization", Value: "Bearer " + tok}); id != 0 {
			h.send(id, grpcFrame(len(list), list), true)
		}
	}
	// 3. Requests declared at the size limit and never finished, on the
	// user port.
	r := dialH2(t, s, s.user)
	for range 100 {
		wg.Go(func() {
			if id := r.call("/trellis.user.v1.UserService/CreateUser"); id != 0 {
				r.send(id, grpcFrame(256<<10, bytes.Repeat([]byte{0x0a}, 250<<10)), false)
			}
		})
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // let the server take in everything it will

	// A normal client is still served.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := users.GetUser(cctx, &userv1.GetUserRequest{Id: uid}); err != nil {
		t.Errorf("normal call during the attack: %v", err)
	}
	cancel()
	close(stop)
	grew := <-peak - base
	t.Logf("RSS %d MiB before the attack, grew by at most %.1f MiB during it (bound %d MiB)", base>>20, float64(grew)/(1<<20), GrowthBound>>20)
	if grew > GrowthBound {
		t.Errorf("one client grew the process by %.1f MiB, over the %d MiB bound", float64(grew)/(1<<20), GrowthBound>>20)
	}
	s.healthy(t)
}
