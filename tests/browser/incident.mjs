// Drives the console's incident pages in headless Chromium: sign in, open the
// run the agent's telemetry opened, see its artifact chain and the signal's
// chart, approve the plan, then wait (while the test's agent runs the action and
// reports fresh telemetry) for the verifier's verdict. Screenshots to OUT_DIR.
//
// Usage: node incident.mjs <control plane URL> <api key> <run id> <out dir> [plan text]
// (plan text: what the plan's step must read, default "vacuum_journal → block")
// Prints APPROVED once the plan is approved (the test then plays the agent).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, apiKey, runId, outDir, planText = "vacuum_journal → block"] = process.argv.slice(2);
mkdirSync(outDir, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = "start";
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  step = "sign in";
  await page.goto(url + "/console/", { waitUntil: "load" });
  await page.fill("#token", apiKey);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#fleet:not([hidden])");

  step = "incidents page lists the run";
  await page.click('nav a[data-page="incidents"]');
  const row = page.locator(`#run-rows tr[data-run="${runId}"]`);
  await row.waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${outDir}/05-incidents.png` });

  step = "run detail: chain and chart";
  await row.click();
  await page.waitForFunction(() => document.querySelectorAll("#run-chain li").length === 5);
  const kinds = await page.$$eval("#run-chain li", (lis) => lis.map((l) => l.dataset.kind));
  if (kinds.join(",") !== "observation_summary,anomaly_finding,root_cause_hypothesis,remediation_proposal,execution_plan") throw new Error("chain: " + kinds);
  const plan = await page.locator('#run-chain li[data-kind="execution_plan"]').textContent();
  if (!plan.includes(planText)) throw new Error("plan: " + plan);
  await page.waitForSelector("#run-chart svg circle", { state: "attached" });
  await page.screenshot({ path: `${outDir}/06-incident-awaiting.png` });

  step = "approve";
  await page.fill("#run-comment", "approved from the console");
  await page.click("#run-approve");
  await page.waitForFunction(() => document.getElementById("run-detail").dataset.status !== "awaiting_approval");
  console.log("APPROVED");

  step = "verifier's verdict";
  await page.waitForFunction(() => {
    const li = document.querySelector('#run-chain li[data-kind="verification_result"]');
    return li && li.textContent.includes("improved") && document.getElementById("run-detail").dataset.status === "closed";
  }, null, { timeout: 60000 });
  await page.waitForSelector("#run-chart svg line.action-marker", { state: "attached" });
  const points = await page.getAttribute("#run-chart svg", "data-points");
  if (Number(points) < 2) throw new Error("chart has " + points + " points: before and after expected");
  await page.screenshot({ path: `${outDir}/07-incident-closed.png` });

  if (await page.isVisible("#run-approve")) throw new Error("approve button still shown on a closed run");
  step = "audit log";
  await page.click('nav a[data-page="audit"]');
  await page.waitForSelector('#audit-rows tr[data-action="plan_approved"]');
  await page.screenshot({ path: `${outDir}/08-audit.png` });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("PASSED");
} catch (e) {
  console.error(`incident console test failed at step "${step}": ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
