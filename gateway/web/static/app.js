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

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : {};
  if (!res.ok) {
    let msg = `${res.status}: ${data.message || res.statusText}`;
    for (const d of data.details || []) {
      for (const v of d.fieldViolations || []) msg += `\n• ${v.field}: ${v.description}`;
    }
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
    const btn = document.createElement("button");
    btn.textContent = "Cancel";
    btn.className = "secondary cancel";
    btn.addEventListener("click", () => run(async () => {
      await api("POST", `/api/v1/orders/${o.id}:cancel`, {});
      await refresh();
    }));
    td.appendChild(btn);
    tr.appendChild(td);
    rows.appendChild(tr);
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
      requestId: crypto.randomUUID(),
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
