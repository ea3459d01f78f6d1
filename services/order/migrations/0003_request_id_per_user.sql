-- Idempotency keys are the client's, scoped per user: two users may pick
-- the same request_id, and neither ever learns of the other's order.
DROP INDEX orders_request_id;
CREATE UNIQUE INDEX orders_user_request_id ON orders (user_id, request_id);
