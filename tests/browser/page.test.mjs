// The web page of `vitrine serve` in a real browser (Debian's chromium, headless, driven by
// playwright-core): a person picks a photo, sees the categories with scores, the heat map and
// similar products, then browses the catalogue. Screenshots are kept as test artefacts.
//
// usage: node page.test.mjs VITRINE_BIN WORK_DIR PHOTOS_DIR
// Exit status: 0 passed, 1 failed, 77 skipped (no chromium or no playwright-core).
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";

const [vitrine, work, photos] = process.argv.slice(2);
const chromium = process.env.VITRINE_CHROMIUM || "/usr/bin/chromium";
if (!vitrine || !work || !photos) {
  console.error("usage: node page.test.mjs VITRINE_BIN WORK_DIR PHOTOS_DIR");
  process.exit(2);
}
let playwright;
try {
  playwright = await import("playwright-core");
} catch {
  console.log("SKIP: playwright-core is not installed (npm ci --prefix tests/browser)");
  process.exit(77);
}
if (!existsSync(chromium)) {
  console.log(`SKIP: no browser at ${chromium} (apt-get install chromium)`);
  process.exit(77);
}

function check(condition, message) {
  if (!condition) {
    console.error("FAIL: " + message);
    process.exitCode = 1;
    throw new Error(message);
  }
  console.log("ok: " + message);
}

// A model whose classes are the catalogue's categories, the example photos as products,
// and a key that may read.
rmSync(work, { recursive: true, force: true });  // a fresh start on every run
mkdirSync(work, { recursive: true });
const run = (...args) => execFileSync(vitrine, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
writeFileSync(path.join(work, "labels.txt"), "bags\nshoes\nshirts\n");
run("init", "--arch", "resnet_custom", "--layers", "1", "1", "1", "1", "--image-size", "64",
    "--labels", path.join(work, "labels.txt"), "--seed", "0", "--out", path.join(work, "model"));
const files = readdirSync(photos).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).sort();
const rows = ["sku,image,title,category,price,seller"];
files.forEach((f, i) => rows.push(`SKU${i},${path.join(photos, f)},${f},${["bags", "shoes", "shirts"][i % 3]},${10 + i},shop`));
writeFileSync(path.join(work, "products.csv"), rows.join("\n") + "\n");
run("index", "--model", path.join(work, "model"), "--catalog", path.join(work, "products.csv"),
    "--db", path.join(work, "db"), "--quiet");
const keysFile = path.join(work, "keys.txt");
const key = run("keys", "add", "--file", keysFile, "--name", "browser", "--scopes", "read").trim();

// A backbone (no classification head) and its own catalogue: similar products only.
run("init", "--arch", "resnet_custom", "--layers", "1", "1", "1", "1", "--image-size", "64",
    "--num-classes", "0", "--seed", "0", "--out", path.join(work, "backbone"));
run("index", "--model", path.join(work, "backbone"), "--catalog", path.join(work, "products.csv"),
    "--db", path.join(work, "backbone-db"), "--quiet");

const servers = [];
async function serve(model, db) {
  const server = spawn(vitrine, ["serve", "--model", path.join(work, model),
                                 "--db", path.join(work, db), "--port", "0", "--api-keys", keysFile, "--no-access-log"],
                       { stdio: ["ignore", "ignore", "pipe"] });
  servers.push(server);
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error("the server did not start: " + log)), 60000);
    server.stderr.on("data", (chunk) => {
      log += chunk;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    server.on("exit", (code) => reject(new Error(`the server exited (${code}): ${log}`)));
  });
}
const port = await serve("model", "db");

const browser = await playwright.chromium.launch({ executablePath: chromium, headless: true,
                                                   args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${port}/`);
  check((await page.title()) === "Vitrine", "the page loads");
  await page.fill("#key", key);
  await page.dispatchEvent("#key", "change");
  await page.setInputFiles("#file", path.join(photos, files[0]));
  await page.waitForSelector("#top tr", { timeout: 60000 });
  await page.waitForSelector("#similar figure", { timeout: 60000 });
  const categories = await page.$$eval("#top tr td:first-child", (tds) => tds.map((t) => t.textContent));
  check(categories.length === 3 && categories.every((c) => ["bags", "shoes", "shirts"].includes(c)),
        `the categories with scores are shown (${categories.join(", ")})`);
  await page.waitForSelector("#heat:not([hidden])", { timeout: 60000 });
  check(await page.$eval("#heat", (img) => img.src.startsWith("data:image/png;base64,")),
        "the heat map is drawn over the photo");
  const skus = await page.$$eval("#similar .sku", (els) => els.map((e) => e.textContent));
  check(skus.length === files.length && skus[0] === "SKU0",
        `similar products are listed, the photo's own product first (${skus.join(", ")})`);
  await page.waitForFunction(() => [...document.querySelectorAll("#similar img")].every((i) => i.complete && i.naturalWidth > 0),
                             null, { timeout: 60000 });
  check(true, "the similar products' photos load");
  mkdirSync(path.join(work, "artefacts"), { recursive: true });
  await page.screenshot({ path: path.join(work, "artefacts", "search.png"), fullPage: true });
  await page.click("#tab-browse");
  await page.waitForSelector("#catalogue figure", { timeout: 60000 });
  const listed = await page.$$eval("#catalogue .sku", (els) => els.length);
  check(listed === files.length, `the catalogue lists its ${listed} products`);
  await page.screenshot({ path: path.join(work, "artefacts", "catalogue.png"), fullPage: true });

  // A backbone's service: no categories, but the similar products all the same.
  const backbonePort = await serve("backbone", "backbone-db");
  await page.goto(`http://127.0.0.1:${backbonePort}/`);
  await page.fill("#key", key);
  await page.dispatchEvent("#key", "change");
  await page.setInputFiles("#file", path.join(photos, files[1]));
  await page.waitForSelector("#similar figure", { timeout: 60000 });
  const backboneSkus = await page.$$eval("#similar .sku", (els) => els.map((e) => e.textContent));
  check(backboneSkus[0] === "SKU1" && (await page.$$("#top tr")).length === 0,
        `a backbone's page lists similar products without categories (${backboneSkus.join(", ")})`);
  check((await page.textContent("#heat-note")).includes("no categories"), "and says it has none");
  check(errors.length === 0, "no script errors" + (errors.length ? ": " + errors.join("; ") : ""));
  console.log("screenshots: " + path.join(work, "artefacts"));
} catch (e) {
  if (!process.exitCode) {
    console.error("FAIL: " + e.message);
    process.exitCode = 1;
  }
} finally {
  await browser.close();
  for (const server of servers) server.kill("SIGTERM");
}
