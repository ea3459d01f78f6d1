// End-to-end test of the browser page: Debian's Chromium, driven by
// playwright-core, against a running trellis (BASE_URL). It goes through
// the flow a person would — a rejected sign-up, a sign-up, an order, a
// rejected order, a cancellation — and saves a screenshot in out/.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.env.BASE_URL || "http://127.0.0.1:18080";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok -", what);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
try {
  page.on("pageerror", (e) => { failed = true; console.error("FAIL: page error:", e.message); });
  // Off localhost over plain HTTP the page is not a secure context and
  // crypto.randomUUID does not exist: take it away to be that page.
  await page.addInitScript(() => { Object.defineProperty(Crypto.prototype, "randomUUID", { value: undefined }); });
  await page.goto(base + "/");
  check((await page.title()) === "Trellis", "page loads");
  const icon = await page.getAttribute("link[rel=icon]", "href");
  check(icon && (await page.request.get(base + icon)).ok(), "the page has a favicon that loads: " + icon);

  // A bad sign-up shows the API's field violations.
  await page.fill("#email", "not-an-email");
  await page.fill("#name", "Ada");
  await page.fill("#password", "short");
  await page.click("#create-user");
  await page.waitForSelector("#error", { state: "visible" });
  const err1 = await page.textContent("#error");
  check(err1.includes("400") && err1.includes("• Email:") && err1.includes("• Password:"), "invalid sign-up shows the field errors by the form's labels: " + JSON.stringify(err1));

  const email = `ada+${Date.now()}@example.com`;
  await page.fill("#email", email);
  await page.fill("#password", "correct-horse");
  await page.click("#create-user");
  await page.waitForFunction(() => document.querySelector("#current-user").textContent.startsWith("Signed up"));
  check(await page.isHidden("#error"), "sign-up clears the error");
  check((await page.textContent("#current-user")).includes(email), "signed-up user is shown");

  await page.fill("#quantity", "2");
  await page.click("#place-order");
  await page.waitForSelector("#orders tr");
  let row = await page.textContent("#orders tr");
  check(row.includes("CONFIRMED") && row.includes("25.00 EUR"), "order is listed as CONFIRMED with its total: " + row);

  await page.fill("#quantity", "0");
  await page.click("#place-order");
  await page.waitForSelector("#error", { state: "visible" });
  const err2 = await page.textContent("#error");
  check(err2.includes("• Quantity:") && !err2.includes("items[0]"), "an invalid order shows the error by the form's label: " + JSON.stringify(err2));

  await page.click("#orders tr button.cancel");
  await page.waitForFunction(() => document.querySelector("#orders tr").textContent.includes("CANCELLED"));
  row = await page.textContent("#orders tr");
  check(row.includes("CANCELLED"), "cancelled order is shown as CANCELLED");

  check((await page.$("#orders tr button.cancel")) === null, "a cancelled order has no Cancel button");
} catch (e) {
  failed = true;
  console.error("FAIL:", e.message);
} finally {
  mkdirSync("out", { recursive: true });
  await page.screenshot({ path: "out/trellis.png", fullPage: true });
  console.log("screenshot: gateway/e2e/out/trellis.png");
  await browser.close();
}
process.exit(failed ? 1 : 0);
