// Trellis demo page: plain JavaScript against the REST gateway, no build
// step, no CDN. Every API error is shown to the person as the gateway
// reports it (message plus field violations and the request id).
//
// Sessions: the access token lives in this page's memory only (never in
// localStorage); the refresh token is an HttpOnly, SameSite=Strict cookie
// the gateway sets when asked with X-Session-Cookie, which script cannot
// read. A reload refreshes to get a new access token.
"use strict";

let userId = null;
let accessToken = null;

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

async function api(method, path, body, retried) {
  const headers = body ? { "Content-Type": "application/json" } : {};
  if (path.startsWith("/api/v1/auth:")) headers["X-Session-Cookie"] = "1";
  else if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body ? JSON.stringify(body) : undefined,
  });
  // An access token expires: get a new one once, then try again.
  if (res.status === 401 && accessToken && !retried && !path.startsWith("/api/v1/auth:")) {
    if (await restore()) return api(method, path, body, true);
  }
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

// signedIn takes a token answer (sign-in or refresh) and shows the user.
async function signedIn(tokens) {
  accessToken = tokens.accessToken;
  userId = tokens.userId;
  const { user } = await api("GET", `/api/v1/users/${userId}`);
  $("current-user").textContent = `Signed in as ${user.name} <${user.email}> (id ${user.id})`;
  $("sign-out").hidden = false;
  await refresh();
}

function signedOut() {
  accessToken = null;
  userId = null;
  $("current-user").textContent = "Not signed in.";
  $("sign-out").hidden = true;
  $("orders").replaceChildren();
  $("orders-note").textContent = "";
}

// restore exchanges the session cookie for a new access token (after a
// reload, or when the token expired); false when there is no session.
async function restore() {
  try {
    const tokens = await api("POST", "/api/v1/auth:refresh", {});
    accessToken = tokens.accessToken;
    userId = tokens.userId;
    return true;
  } catch {
    signedOut();
    return false;
  }
}

async function signIn() {
  await signedIn(await api("POST", "/api/v1/auth:signIn", { email: $("email").value, password: $("password").value }));
}

$("user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    await api("POST", "/api/v1/users", {
      email: $("email").value, name: $("name").value, password: $("password").value,
    });
    await signIn();
  });
});

$("sign-in").addEventListener("click", () => run(signIn));

$("sign-out").addEventListener("click", () => run(async () => {
  await api("POST", "/api/v1/auth:signOut", {});
  signedOut();
}));

$("order-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    if (!userId) throw new Error("Sign up or sign in first.");
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

// A reload keeps the session: the cookie gets a new access token.
run(async () => {
  if (await restore()) await signedIn({ accessToken, userId });
});
