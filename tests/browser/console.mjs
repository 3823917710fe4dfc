// Drives the Tether web console in headless Chromium, as an operator would:
// sign in (a wrong key first), see the enrolled (real) agent on the fleet page
// with its health, flip a workload's instrumentation on the services page, and
// watch the action the agent receives reach its final state and the workload
// report instrumented. Screenshots of each page go to OUT_DIR.
//
// Usage: node console.mjs <control plane URL> <api key> <agent id> <workload key> <out dir>
// Exit 0 when every step passed; otherwise a message naming the step.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, apiKey, agentId, workload, outDir] = process.argv.slice(2);
mkdirSync(outDir, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = "start";
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  step = "sign-in page";
  await page.goto(url + "/", { waitUntil: "load" });
  await page.waitForSelector("#signin:not([hidden])");
  await page.screenshot({ path: `${outDir}/01-signin.png` });

  step = "wrong key refused";
  await page.fill("#token", "tet_key.nobody.0000000000000000." + "0".repeat(64));
  await page.click("#signin-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.includes("invalid_credential"));

  step = "sign in";
  await page.fill("#token", apiKey);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#fleet:not([hidden])");

  step = "agent on the fleet page";
  const agentRow = page.locator(`#fleet-rows tr[data-agent="${agentId}"]`);
  await agentRow.waitFor({ timeout: 15000 });
  const liveness = await agentRow.locator(".badge").first().textContent();
  if (liveness !== "active") throw new Error(`agent liveness is ${liveness}`);
  step = "the agent's health on the fleet page";
  await page.waitForFunction((id) => {
    const r = document.querySelector(`#fleet-rows tr[data-agent="${id}"]`);
    const c = r && r.querySelector("td[data-unavailable]");
    return c && c.dataset.unavailable.split(",").includes("gpu") && r.querySelector(".vitals").textContent.includes("mem");
  }, agentId, { timeout: 20000 });
  await page.screenshot({ path: `${outDir}/02-fleet.png` });

  step = "services page";
  await page.click('nav a[data-page="services"]');
  const row = page.locator(`#service-rows tr[data-workload="${workload}"]`);
  await row.waitFor({ timeout: 15000 });

  step = "flip instrumentation";
  await row.locator('input[data-toggle="instrument"]').check();
  console.log("TOGGLED");
  step = "action reaches the agent and finishes";
  await page.waitForFunction((w) => {
    const r = document.querySelector(`#service-rows tr[data-workload="${w}"]`);
    return r && r.dataset.actionState === "succeeded" && r.textContent.includes("in sync");
  }, workload, { timeout: 60000 });
  await page.screenshot({ path: `${outDir}/03-services.png` });

  step = "the fleet page shows the agent in sync with the desired revision";
  await page.click('nav a[data-page="fleet"]');
  await page.waitForFunction((id) => {
    const r = document.querySelector(`#fleet-rows tr[data-agent="${id}"]`);
    const c = r && r.querySelector("td.drift");
    return c && c.dataset.lag === "0" && c.textContent.includes("in sync");
  }, agentId, { timeout: 30000 });

  step = "actions page";
  await page.click('nav a[data-page="actions"]');
  await page.waitForFunction(() => document.querySelectorAll("#action-rows tr").length > 0);
  const text = await page.locator("#action-rows").textContent();
  if (!text.includes("instrument") || !text.includes("succeeded")) throw new Error("actions page: " + text);
  await page.screenshot({ path: `${outDir}/04-actions.png` });

  step = "status page";
  await page.click('nav a[data-page="health"]');
  await page.waitForFunction(() => document.querySelectorAll("#health-deps tr").length === 4);
  for (const dep of ["dynamodb", "secretsmanager", "sqs", "cloudwatch"]) {
    const row = await page.locator(`#health-deps tr[data-dependency="${dep}"]`).textContent();
    if (!row.includes("ok")) throw new Error(`status page: ${dep}: ${row}`);
  }
  if ((await page.locator('#health-queues tr[data-queue="observations"]').count()) !== 1) {
    throw new Error("status page: no observations queue");
  }
  // The emulator publishes no SQS metrics: the age must read unknown, not 0.
  const oldest = await page.locator('#health-queues tr[data-queue="observations"] td.oldest').textContent();
  if (oldest !== "unknown") throw new Error(`status page: oldest message age ${oldest}`);
  await page.screenshot({ path: `${outDir}/05-status.png` });

  step = "sign out";
  await page.click("#signout");
  await page.waitForSelector("#signin:not([hidden])");
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("PASSED");
} catch (e) {
  console.error(`console test failed at step "${step}": ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
