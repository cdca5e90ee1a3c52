// The web console's "fast and light" numbers (issue 22, part 5), measured in Debian's Chromium
// against a running server: run by scripts/bench-console, which starts the server and prints
// the results into BENCHMARKS.md's shape.
//
// Environment: EMBER_URL, EMBER_ADMIN (JSON keys), EMBER_FN (a function with logs), EMBER_PID
// (the server's pid, whose CPU time is read from /proc), EMBER_LOADS (page loads to time),
// EMBER_CPU_SECONDS (seconds per CPU phase).
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';

const url = process.env.EMBER_URL;
const admin = JSON.parse(process.env.EMBER_ADMIN);
const fn = process.env.EMBER_FN;
const pid = process.env.EMBER_PID;
const loads = Number(process.env.EMBER_LOADS || 20);
const cpuSeconds = Number(process.env.EMBER_CPU_SECONDS || 30);
const TICKS = 100; // USER_HZ on Linux

const cpuTicks = () => {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const out = {};
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  // 1. First page load, empty browser cache, warm server: navigation start to the first frame
  //    after the app rendered the sign-in form (its `ember-console-painted` mark), and to the
  //    load event; and the bytes that crossed the wire.
  const shown = [];
  const loaded = [];
  let transfer = 0;
  let files = 0;
  for (let i = 0; i < loads + 1; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/console/`);
    await page.waitForSelector('#signin');
    const t = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const resources = performance.getEntriesByType('resource');
      const painted = performance.getEntriesByName('ember-console-painted')[0];
      return {
        shown: painted ? painted.startTime : NaN,
        load: nav.loadEventEnd || performance.now(),
        bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
        files: 1 + resources.length,
      };
    });
    if (i > 0) {
      // The first load warms the server's side (page cache, connections); it is not counted.
      shown.push(t.shown);
      loaded.push(t.load);
      transfer = t.bytes;
      files = t.files;
    }
    await context.close();
  }
  // The floor, in the same run: a fresh browser context loading the smallest document this
  // server answers (/console/config.json, a few bytes of JSON, no script).
  const floor = [];
  for (let i = 0; i < loads + 1; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/console/config.json`);
    const t = await page.evaluate(() => performance.getEntriesByType('navigation')[0].loadEventEnd);
    if (i > 0) floor.push(t);
    await context.close();
  }
  out.floor_load_event_ms = { p50: pct(floor, 50), p90: pct(floor, 90), max: Math.max(...floor) };
  out.first_load_ms = { p50: pct(shown, 50), p90: pct(shown, 90), max: Math.max(...shown), n: shown.length };
  out.load_event_ms = { p50: pct(loaded, 50), p90: pct(loaded, 90), max: Math.max(...loaded) };
  out.first_load_bytes = transfer;
  out.first_load_files = files;

  // 2. Signed in, the functions list drawn after a reload with the browser's cache warm.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${url}/console/`);
  await page.fill('input[name=accessKeyId]', admin.AccessKeyId);
  await page.fill('input[name=secretAccessKey]', admin.SecretAccessKey);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#functions tbody tr');
  const listed = [];
  for (let i = 0; i < loads; i++) {
    const start = Date.now();
    await page.reload();
    await page.waitForSelector('#functions tbody tr');
    listed.push(Date.now() - start);
  }
  out.signed_in_reload_to_list_ms = { p50: pct(listed, 50), p90: pct(listed, 90), max: Math.max(...listed) };

  // 3. The server's CPU while a page is open (visible), against none open, interleaved.
  const phases = [
    ['none', 'about:blank'],
    ['functions', `${url}/console/#/functions`],
    ['logs', `${url}/console/#/logs/${encodeURIComponent(fn)}`],
    ['fleet', `${url}/console/#/fleet`],
  ];
  const cpu = Object.fromEntries(phases.map(([n]) => [n, []]));
  for (let round = 0; round < 2; round++) {
    for (const [name, to] of phases) {
      await page.goto(to);
      await page.waitForTimeout(1500); // let the page settle into its polling
      const t0 = cpuTicks();
      const w0 = Date.now();
      await page.waitForTimeout(cpuSeconds * 1000);
      const used = (cpuTicks() - t0) / TICKS;
      cpu[name].push((100 * used) / ((Date.now() - w0) / 1000));
    }
  }
  out.server_cpu_percent = Object.fromEntries(Object.entries(cpu).map(([n, xs]) => [n, xs.map((x) => Number(x.toFixed(3)))]));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out, null, 2));
