package order

import (
	"strconv"

	"golang.org/x/text/currency"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	"github.com/trellis-mesh/trellis/internal/validate"
)

// Limits of the order contract.
const (
	MaxItems             = 100
	MaxQuantity          = 1000
	MaxProductIDLen      = 100
	MaxIdempotencyKeyLen = 100
	// MaxUnitPrice keeps every total far from int64 overflow:
	// 1e12 * 1000 * 100 = 1e17 < 9.2e18.
	MaxUnitPrice = 1_000_000_000_000
	DefaultPage  = 50
	MaxPage      = 1000
)

// validCurrency reports whether code is an ISO 4217 currency code, as
// golang.org/x/text/currency knows them, in upper case. XXX ("no
// currency") and XTS (reserved for testing) are not money.
func validCurrency(code string) bool {
	u, err := currency.ParseISO(code)
	return err == nil && u.String() == code && code != "XXX" && code != "XTS"
}

// Validate checks an OrderService request before any handler runs (the
// mesh server calls it) and returns every bad field.
func Validate(req any) []*errdetails.BadRequest_FieldViolation {
	var v validate.Violations
	switch r := req.(type) {
	case *orderv1.CreateOrderRequest:
		v.ID("user_id", r.GetUserId())
		v.Text("request_id", r.GetRequestId(), MaxIdempotencyKeyLen)
		checkItems(&v, r.GetItems())
	case *orderv1.GetOrderRequest:
		v.ID("id", r.GetId())
	case *orderv1.CancelOrderRequest:
		v.ID("id", r.GetId())
		v.Etag("etag", r.GetEtag())
	case *orderv1.ListOrdersRequest:
		v.ID("user_id", r.GetUserId())
		v.PageSize("page_size", r.GetPageSize())
	}
	return v
}

func checkItems(v *validate.Violations, items []*orderv1.OrderItem) {
	switch n := len(items); {
	case n == 0:
		v.Add("items", "at least one item is required")
		return
	case n > MaxItems:
		v.Add("items", "at most 100 items per order")
		return
	}
	currency := items[0].GetUnitPrice().GetCurrencyCode()
	for i, it := range items {
		f := "items[" + strconv.Itoa(i) + "]"
		v.Text(f+".product_id", it.GetProductId(), MaxProductIDLen)
		if q := it.GetQuantity(); q < 1 || q > MaxQuantity {
			v.Add(f+".quantity", "must be between 1 and 1000")
		}
		p := it.GetUnitPrice()
		switch {
		case p == nil:
			v.Add(f+".unit_price", "required")
			continue
		case !validCurrency(p.GetCurrencyCode()):
			v.Add(f+".unit_price.currency_code", "must be an ISO 4217 currency code such as EUR")
		case p.GetCurrencyCode() != currency:
			v.Add(f+".unit_price.currency_code", "every item of an order must use the same currency ("+currency+")")
		}
		if a := p.GetAmountMinor(); a < 0 || a > MaxUnitPrice {
			v.Add(f+".unit_price.amount_minor", "must be between 0 and 1000000000000")
		}
	}
}
