// The console in a real browser: Debian's Chromium, driven by playwright-core (no browser
// download). Run by tests/console.rs (in_a_browser), which starts the engine and sets:
//   CONSOLE_URL  the admin listener (http://127.0.0.1:port)
//   CONSOLE_TOKEN  the admin token
//   CONSOLE_ORDER  an index value (order=...) of a dead message
//   SHOTS  where the screenshots go
//   CHROMIUM  the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";

const url = process.env.CONSOLE_URL;
const shots = process.env.SHOTS;
const shot = (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const expectText = async (page, text) => {
  await page.getByText(text, { exact: false }).first().waitFor({ timeout: 15000 });
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  // Not logged in: sent to the login page.
  await page.goto(`${url}/ui`);
  await page.waitForURL(/\/ui\/login/);
  await shot(page, "login");
  await page.fill("input[name=token]", process.env.CONSOLE_TOKEN);
  await page.fill("input[name=name]", "Ada");
  await page.click("button[type=submit]");
  await page.waitForURL(`${url}/ui`);
  await expectText(page, "Destinations with pending deliveries");
  await expectText(page, "invoices");
  await expectText(page, "shop");
  await shot(page, "dashboard");

  // Search by an index field, open the dead message.
  await page.click("nav >> text=Messages");
  await page.fill("input[name=field]", `order=${process.env.CONSOLE_ORDER}`);
  await page.click("form.filters button[type=submit]");
  await page.waitForURL(/field=order/);
  const rows = page.locator("tbody tr");
  if ((await rows.count()) !== 1) throw new Error(`expected 1 message, found ${await rows.count()}`);
  await shot(page, "search");
  await rows.first().locator("a").first().click();
  await page.waitForURL(/\/ui\/messages\/[0-9a-f-]{36}$/);
  await expectText(page, "Timeline");
  if (!(await page.locator("dd .state.bad", { hasText: "dead" }).count())) throw new Error("the message is not shown dead");
  await shot(page, "message-dead");

  // Replay it; the new delivery succeeds.
  await page.click("text=Replay the whole message");
  await page.waitForURL(/replayed=/);
  await expectText(page, "queued to run through the route again");
  const deadline = Date.now() + 20000;
  for (;;) {
    if (await page.locator("dd .state.good", { hasText: "delivered" }).count()) break;
    if (Date.now() > deadline) throw new Error("the replayed message was not delivered");
    await page.waitForTimeout(500);
    await page.reload();
  }
  await shot(page, "message-delivered");

  // The dead list with its bulk replay, and the live log.
  await page.click("nav >> text=Dead");
  await expectText(page, "Dead messages");
  await shot(page, "dead");
  await page.click("nav >> text=Live log");
  await expectText(page, "following: new lines appear below");
  await shot(page, "log");

  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
  console.log("console in Chromium: login, dashboard, search, message, replay, dead list, live log: ok");
} finally {
  await browser.close();
}
