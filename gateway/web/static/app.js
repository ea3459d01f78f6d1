// Trellis demo page: plain JavaScript against the REST gateway, no build
// step, no CDN. Every API error is shown to the person as the gateway
// reports it (message plus field violations and the request id).
"use strict";

let userId = null;

const $ = (id) => document.getElementById(id);

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.style.display = text ? "block" : "none";
}

// labels names a request field the way the form does: the API reports
// proto field paths ("items[0].unit_price.currency_code"), people read
// the labels they typed into.
const labels = {
  email: "Email", name: "Name", password: "Password", user_id: "User", request_id: "Request id",
  product_id: "Product", quantity: "Quantity", amount_minor: "Unit price", currency_code: "Currency",
  unit_price: "Unit price", items: "Items", id: "Order",
};

function label(field) {
  const last = field.split(".").pop().replace(/\[\d+\]$/, "");
  return labels[last] || field;
}

// newRequestId makes an idempotency key. crypto.randomUUID exists only in
// secure contexts (HTTPS or localhost); over plain HTTP elsewhere the page
// builds a version-4 UUID from crypto.getRandomValues, which is everywhere.
function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : {};
  if (!res.ok) {
    const violations = (data.details || []).flatMap((d) => d.fieldViolations || []);
    // With field violations, the list says it all, by the form's labels.
    let msg = violations.length
      ? `${res.status}: please correct ${violations.length === 1 ? "this field" : "these fields"}`
      : `${res.status}: ${data.message || res.statusText}`;
    for (const v of violations) msg += `\n• ${label(v.field)}: ${v.description}`;
    const rid = res.headers.get("X-Request-Id");
    if (rid) msg += `\n(request id ${rid})`;
    throw new Error(msg);
  }
  return data;
}

function money(m) {
  return `${(Number(m.amountMinor || 0) / 100).toFixed(2)} ${m.currencyCode}`;
}

async function refresh() {
  if (!userId) return;
  const ov = await api("GET", `/api/v1/users/${userId}:overview`);
  $("orders-note").textContent = ov.ordersAvailable ? "" : ov.ordersError;
  const rows = $("orders");
  rows.replaceChildren();
  for (const o of ov.recentOrders) {
    const tr = document.createElement("tr");
    tr.dataset.orderId = o.id;
    const items = o.items.map((i) => `${i.quantity}× ${i.productId}`).join(", ");
    const status = o.status.replace("ORDER_STATUS_", "");
    for (const text of [o.id.slice(-8), items, money(o.total), status]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    tr.appendChild(td);
    rows.appendChild(tr);
    if (status === "CANCELLED") continue; // nothing left to do with it
    const btn = document.createElement("button");
    btn.textContent = "Cancel";
    btn.className = "secondary cancel";
    btn.addEventListener("click", () => run(async () => {
      await api("POST", `/api/v1/orders/${o.id}:cancel`, {});
      await refresh();
    }));
    td.appendChild(btn);
  }
}

async function run(fn) {
  showError("");
  try { await fn(); } catch (e) { showError(e.message); }
}

$("user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    const { user } = await api("POST", "/api/v1/users", {
      email: $("email").value, name: $("name").value, password: $("password").value,
    });
    userId = user.id;
    $("current-user").textContent = `Signed up as ${user.name} <${user.email}> (id ${user.id})`;
    await refresh();
  });
});

$("order-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    if (!userId) throw new Error("Create a user first.");
    await api("POST", "/api/v1/orders", {
      userId,
      requestId: newRequestId(),
      items: [{
        productId: $("product").value,
        quantity: Number($("quantity").value),
        unitPrice: { currencyCode: $("currency").value, amountMinor: $("price").value },
      }],
    });
    await refresh();
  });
});

$("refresh").addEventListener("click", () => run(refresh));
