package order

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	"github.com/trellis-mesh/trellis/mesh"
)

// GRPC adapts the Service to orderv1.OrderServiceServer.
type GRPC struct {
	orderv1.UnimplementedOrderServiceServer
	svc *Service
}

// NewGRPC returns the gRPC adapter of svc.
func NewGRPC(svc *Service) *GRPC { return &GRPC{svc: svc} }

// ToProto converts an order for the wire.
func ToProto(o Order) *orderv1.Order {
	items := make([]*orderv1.OrderItem, len(o.Items))
	for i, it := range o.Items {
		items[i] = &orderv1.OrderItem{
			ProductId: it.ProductID,
			Quantity:  it.Quantity,
			UnitPrice: &orderv1.Money{CurrencyCode: o.Currency, AmountMinor: it.UnitPrice},
		}
	}
	return &orderv1.Order{
		Id:         o.ID,
		UserId:     o.UserID,
		Items:      items,
		Total:      &orderv1.Money{CurrencyCode: o.Currency, AmountMinor: o.Total},
		Status:     orderv1.OrderStatus(o.Status),
		CreateTime: timestamppb.New(o.CreateTime),
		UpdateTime: timestamppb.New(o.UpdateTime),
		Etag:       o.Etag(),
	}
}

// CreateOrder implements orderv1.OrderServiceServer.
func (g *GRPC) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	in := CreateInput{UserID: req.GetUserId(), IdempotencyKey: req.GetRequestId()}
	for _, it := range req.GetItems() {
		in.Currency = it.GetUnitPrice().GetCurrencyCode()
		in.Items = append(in.Items, Item{ProductID: it.GetProductId(), Quantity: it.GetQuantity(), UnitPrice: it.GetUnitPrice().GetAmountMinor()})
	}
	o, err := g.svc.Create(ctx, in)
	if err != nil {
		return nil, err
	}
	return &orderv1.CreateOrderResponse{Order: ToProto(o)}, nil
}

// GetOrder implements orderv1.OrderServiceServer.
func (g *GRPC) GetOrder(ctx context.Context, req *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	o, err := g.svc.Get(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &orderv1.GetOrderResponse{Order: ToProto(o)}, nil
}

// ListOrders implements orderv1.OrderServiceServer.
func (g *GRPC) ListOrders(ctx context.Context, req *orderv1.ListOrdersRequest) (*orderv1.ListOrdersResponse, error) {
	os, next, err := g.svc.List(ctx, req.GetUserId(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := make([]*orderv1.Order, len(os))
	for i, o := range os {
		out[i] = ToProto(o)
	}
	return &orderv1.ListOrdersResponse{Orders: out, NextPageToken: next}, nil
}

// CancelOrder implements orderv1.OrderServiceServer.
func (g *GRPC) CancelOrder(ctx context.Context, req *orderv1.CancelOrderRequest) (*orderv1.CancelOrderResponse, error) {
	o, err := g.svc.Cancel(ctx, req.GetId(), mesh.Etag(ctx, req.GetEtag()))
	if err != nil {
		return nil, err
	}
	return &orderv1.CancelOrderResponse{Order: ToProto(o)}, nil
}
