// Drives Ember's web console in a real browser (Debian's Chromium through playwright-core), as
// tests/e2e/test_console.py asks: every step asserts what a user sees, and the first that does
// not hold throws (the test prints why). Screenshots go to $EMBER_SHOTS.
//
// Environment: EMBER_URL (the server), EMBER_ADMIN / EMBER_OTHER (JSON keys of the admin and of
// another account), EMBER_FN (the admin's function: it prints its event), EMBER_OTHER_FN (the
// other account's), EMBER_SHOTS (a directory).
import { chromium } from 'playwright-core';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';

const url = process.env.EMBER_URL;
const admin = JSON.parse(process.env.EMBER_ADMIN);
const other = JSON.parse(process.env.EMBER_OTHER);
const fn = process.env.EMBER_FN;
const otherFn = process.env.EMBER_OTHER_FN;
const shots = process.env.EMBER_SHOTS;
const TIMEOUT = 20000;

function check(cond, what) {
  if (!cond) throw new Error(`not as expected: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
const problems = [];
const watch = (page) => {
  // A CSP violation or a script error is a failure, whatever the page shows.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[34]/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
};

async function signedIn(context, keys) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  watch(page);
  const response = await page.goto(`${url}/console/`);
  check(response.status() === 200, 'the console answers at /console/');
  check((response.headers()['content-security-policy'] || '').includes("script-src 'self'"), 'the page is served with its CSP');
  await page.fill('input[name=accessKeyId]', keys.AccessKeyId);
  await page.fill('input[name=secretAccessKey]', keys.SecretAccessKey);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#account');
  return page;
}

try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });

  // A wrong secret is refused, and nothing of the secret is kept anywhere.
  {
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(`${url}/console/`);
    await page.fill('input[name=accessKeyId]', admin.AccessKeyId);
    await page.fill('input[name=secretAccessKey]', 'not-the-secret');
    await page.click('#signin button[type=submit]');
    const error = await page.waitForSelector('.error');
    check(/signature/i.test(await error.textContent()), 'a wrong secret is refused with the API\'s signature error');
    await page.close();
  }

  // Sign in as the admin: the functions list shows the admin's function, not the other's.
  const main = await signedIn(context, admin);
  await main.waitForSelector(`#functions a:text-is("${fn}")`);
  check((await main.textContent('#account')).includes('(admin)'), 'the admin is signed in as the admin');
  check(!(await main.textContent('#functions')).includes(otherFn), "another account's function is not listed");
  const stored = await main.evaluate(() => JSON.stringify({ ...sessionStorage }) + document.cookie + JSON.stringify({ ...localStorage }));
  check(!stored.includes(admin.SecretAccessKey), 'the secret is kept in no storage and no cookie');
  check((await context.cookies()).length === 0, 'the console sets no cookie');

  // A second tab follows the function's logs live.
  const logs = await signedIn(context, admin);
  await logs.goto(`${url}/console/#/logs/${encodeURIComponent(fn)}`);
  await logs.waitForSelector('.live');

  // Invoke from the form: the result, the REPORT and the log tail are shown.
  await main.goto(`${url}/console/#/function/${encodeURIComponent(fn)}`);
  await main.waitForSelector('#function-name');
  await main.fill('#invoke textarea', '{"oops": ');
  check(await main.isDisabled('#invoke button[type=submit]'), 'a payload that is not JSON cannot be sent');
  const marker = randomUUID();
  await main.fill('#invoke textarea', JSON.stringify({ marker }));
  await main.click('#invoke button[type=submit]');
  await main.waitForSelector('#result-payload');
  check((await main.textContent('#result-payload')).includes(marker), 'the invocation\'s result is shown');
  check((await main.textContent('#result-report')).startsWith('REPORT RequestId:'), 'its REPORT is shown');
  check((await main.textContent('#result-log')).includes(marker), 'its log tail is shown');
  await main.screenshot({ path: join(shots, 'function.png'), fullPage: true });

  // The log line arrives in the other tab.
  await logs.waitForSelector(`#logs article:has-text("${marker}")`);
  check(true, 'the invocation\'s log line arrived on the Logs page');

  // A failing invocation: shown as an error, and kept by the errors-only filter.
  const failing = randomUUID();
  await main.fill('#invoke textarea', JSON.stringify({ fail: true, marker: failing }));
  await main.click('#invoke button[type=submit]');
  await main.waitForSelector('#result-payload:has-text("asked to fail")');
  check((await main.textContent('#result')).includes('Error (Unhandled)'), 'a function error is shown as one');
  await logs.waitForSelector(`#logs article:has-text("${failing}")`);
  await logs.check('#errors-only');
  await logs.waitForSelector(`#logs article:has-text("${marker}")`, { state: 'detached' });
  check(await logs.isVisible(`#logs article:has-text("${failing}")`), 'errors only keeps the failed invocation and hides the successful one');
  await logs.uncheck('#errors-only');
  await logs.fill('#request-filter', 'no-such-request');
  await logs.waitForSelector(`#logs article:has-text("${marker}")`, { state: 'detached' });
  await logs.fill('#request-filter', '');
  await logs.waitForSelector(`#logs article:has-text("${marker}")`);
  check(true, 'the request id filter hides and shows it');
  await logs.screenshot({ path: join(shots, 'logs.png'), fullPage: true });

  // The fleet page moves after an invocation.
  await logs.goto(`${url}/console/#/fleet`);
  await logs.waitForSelector('#starts');
  await logs.waitForFunction(() => document.querySelector('#starts').textContent.includes('/'));
  const before = await logs.textContent('#starts');
  await main.fill('#invoke textarea', JSON.stringify({ marker: 'fleet' }));
  await main.click('#invoke button[type=submit]');
  await main.waitForSelector('#result-payload:has-text("fleet")');
  await logs.waitForFunction((b) => document.querySelector('#starts').textContent !== b, before, { timeout: TIMEOUT });
  check(true, `the fleet page updated after an invocation (${before} → ${await logs.textContent('#starts')})`);
  check((await logs.locator('#fleet-summary').textContent()).includes('Request rate'), 'the fleet page shows the request rate');
  // The plots start from the server's samples of the minutes before the page opened.
  const fleetPlotted = await logs
    .waitForFunction(() => document.querySelectorAll('.chart canvas').length >= 4, null, { timeout: TIMEOUT })
    .then(() => true, () => false);
  check(fleetPlotted, 'the fleet page draws its four plots');
  await logs.screenshot({ path: join(shots, 'fleet.png'), fullPage: true });

  // Sizing: the plots of the function's executions.
  await main.goto(`${url}/console/#/sizing/${encodeURIComponent(fn)}`);
  await main.waitForSelector('#sizing-summary');
  // The plots are drawn by an effect after the page's first render: wait for them, not a frame.
  const plotted = await main
    .waitForFunction(() => document.querySelectorAll('.chart canvas').length >= 2, null, { timeout: TIMEOUT })
    .then(() => true, () => false);
  check(plotted, 'the sizing page draws its plots of executions and decisions');
  check(/down from 256 MB/.test(await main.textContent('#recommendation')), 'the sizing page says why the function was resized');
  await main.screenshot({ path: join(shots, 'sizing.png'), fullPage: true });

  // Back on the list: the invocations of the last hour are counted.
  await main.goto(`${url}/console/#/functions`);
  await main.waitForFunction(
    (name) =>
      [...document.querySelectorAll('#functions tbody tr')].some(
        (tr) => tr.cells[0].textContent === name && Number(tr.cells[4].textContent) >= 3 && Number(tr.cells[5].textContent) === 1,
      ),
    fn,
  );
  check(true, 'the list counts the invocations and the one error of the last hour');
  await main.fill('#search', 'no-such-function');
  await main.waitForFunction(() => document.querySelectorAll('#functions tbody tr').length === 0);
  check(true, 'search filters the list');
  await main.fill('#search', '');
  await main.screenshot({ path: join(shots, 'functions.png'), fullPage: true });

  // Another account sees its own function only, and no fleet.
  const otherContext = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const theirs = await signedIn(otherContext, other);
  await theirs.waitForSelector(`#functions a:text-is("${otherFn}")`);
  check(!(await theirs.textContent('#functions')).includes(fn), "the admin's function is not in another account's list");
  check((await theirs.locator('nav a:text-is("Fleet")').count()) === 0, 'another account has no Fleet link');
  await theirs.goto(`${url}/console/#/function/${encodeURIComponent(fn)}`);
  const notFound = await theirs.waitForSelector('.error');
  check(/ResourceNotFoundException/.test(await notFound.textContent()), "the admin's function is not found from another account");
  await theirs.goto(`${url}/console/#/logs/${encodeURIComponent(fn)}`);
  await theirs.waitForSelector('.error');
  check(!(await theirs.textContent('main')).includes('marker'), "the admin's logs are not shown to another account");
  await theirs.goto(`${url}/console/#/fleet`);
  check((await theirs.textContent('main')).includes('Only the administrator'), 'another account is told the fleet is the admin\'s');

  // A key of a past UTC day is not used: the console asks to sign in again.
  await theirs.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem('ember-console-session'));
    sessionStorage.setItem('ember-console-session', JSON.stringify({ ...s, date: '20000101' }));
  });
  await theirs.goto(`${url}/console/#/functions`);
  await theirs.waitForSelector('#signin');
  check(true, "a signing key of a past day sends the user back to sign-in");

  // Signing out forgets the key.
  await main.click('#signout');
  await main.waitForSelector('#signin');
  check((await main.evaluate(() => sessionStorage.length)) === 0, 'signing out forgets the signing key');

  check(problems.length === 0, `no script error or CSP violation (${problems.join('; ')})`);
} finally {
  await browser.close();
}
