// The Admin Console in a real browser: the system Chromium driven by playwright-core,
// accessibility checked by axe-core. Run by controller/tests/console_browser.rs, which
// starts the controller and its console, creates the users, applies the policy and feeds
// live events; everything it knows arrives in the environment below. Exit 0 when every
// check passed; otherwise each failure is printed and the exit code is 1.
//
// CONSOLE_URL, PASSWORD, ADMIN_USER, ADMIN_SECRET, ADMIN2_USER, ADMIN2_SECRET,
// AUDITOR_USER, AUDITOR_SECRET (base32 TOTP secrets), REVOKE_AGENT (an agent id),
// NEW_POLICY (a policy text to apply), EVIL_NAME (a resource named like markup),
// IDLE_MS (the console's idle timeout), SHOTS (folder for screenshots), CHROMIUM.

import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const env = (k) => {
  const v = process.env[k];
  if (v === undefined || v === '') throw new Error(`${k} is not set`);
  return v;
};
const URL = env('CONSOLE_URL');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });
const AXE = readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'node_modules/axe-core/axe.min.js'), 'utf8');

// RFC 6238 TOTP (SHA-1, 6 digits, 30 s) of a base32 secret at `offset` steps from now:
// the test's own implementation, not the controller's.
function totp(secret, offset = 0) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    bits += i.toString(2).padStart(5, '0');
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const step = Math.floor(Date.now() / 1000 / 30) + offset;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = createHmac('sha1', key).update(msg).digest();
  const o = h[h.length - 1] & 0xf;
  const n = (h.readUInt32BE(o) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, '0');
}

const failures = [];
const passed = [];
async function check(name, f) {
  try {
    await f();
    passed.push(name);
    console.log(`ok   ${name}`);
  } catch (e) {
    failures.push(`${name}: ${e.message}`);
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
function expect(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});

// A browser profile of its own per user; any script dialog (an injected `alert`) or CSP
// violation is a failure.
async function session() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('dialog', async (d) => {
    failures.push(`a script dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
      failures.push(`CSP violation on ${page.url()}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => failures.push(`script error on ${page.url()}: ${e.message}`));
  return { context, page };
}

async function login(page, user, secret, offset = 0) {
  await page.goto(`${URL}/`);
  expect(page.url().includes('/login'), `not sent to the login page: ${page.url()}`);
  await page.fill('#login-user', user);
  await page.fill('#login-password', env('PASSWORD'));
  await page.fill('#login-totp', totp(secret, offset));
  await Promise.all([page.waitForNavigation(), page.click('#login-form button[type=submit]')]);
  expect(!page.url().includes('/login'), `still on the login page: ${await text(page, '#error')}`);
}

async function text(page, sel) {
  const el = await page.$(sel);
  return el ? (await el.innerText()).trim() : '';
}

// axe-core on the page as the browser rendered it: the same session's cookies in a context
// that lets the test inject axe (the console's CSP rightly refuses injected scripts).
const axeContext = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 } });
async function accessible(context, path) {
  await axeContext.clearCookies();
  await axeContext.addCookies(await context.cookies());
  const p = await axeContext.newPage();
  try {
    const r = await p.goto(`${URL}${path}`);
    expect(r.status() === 200, `${path}: status ${r.status()} in the axe context`);
    await p.addScriptTag({ content: AXE });
    const result = await p.evaluate(async () => await globalThis.axe.run());
    const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    expect(
      bad.length === 0,
      `${path}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.help} [${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}]`).join('; ')}`,
    );
  } finally {
    await p.close();
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `console-${name}.png`), fullPage: true });
}

const admin = await session();
const a = admin.page;

await check('a wrong TOTP code is refused at login', async () => {
  await a.goto(`${URL}/login`);
  await shot(a, 'login');
  await a.fill('#login-user', env('ADMIN_USER'));
  await a.fill('#login-password', env('PASSWORD'));
  const good = totp(env('ADMIN_SECRET'));
  await a.fill('#login-totp', good === '000000' ? '111111' : '000000');
  await Promise.all([a.waitForNavigation(), a.click('#login-form button[type=submit]')]);
  expect(a.url().includes('/login'), `a wrong code logged in: ${a.url()}`);
  expect((await text(a, '#error')) !== '', 'no error shown');
});

await check('log in with password and TOTP', async () => {
  await login(a, env('ADMIN_USER'), env('ADMIN_SECRET'));
  expect((await a.$('#agents-summary')) !== null, 'the overview is not shown');
});

// Every view renders (200, its heading), is screenshotted and passes axe.
const views = [
  ['/', 'overview', '#agents-summary'],
  ['/objects/resource', 'resources', '#objects-table'],
  ['/objects/remote_network', 'remote-networks', '#objects-table'],
  ['/objects/connector', 'connectors', '#objects-table'],
  ['/objects/user', 'users-objects', '#objects-table'],
  ['/objects/group', 'groups', '#objects-table'],
  ['/objects/device', 'devices', '#objects-table'],
  ['/objects/service_account', 'service-accounts', '#objects-table'],
  ['/objects/resource/web', 'resource-web', '#object-toml'],
  ['/policy', 'policy', '#policy-text'],
  ['/explain', 'explain', '#explain-form'],
  ['/activity', 'activity', '#activity-table'],
  ['/agents', 'agents', '#agents-table'],
  ['/audit', 'audit', '#audit-table'],
  ['/keys', 'keys', '#keys-table'],
  ['/users', 'users', '#users-table'],
];
for (const [path, name, sel] of views) {
  await check(`view ${path} renders and is accessible`, async () => {
    const r = await a.goto(`${URL}${path}`);
    expect(r.status() === 200, `status ${r.status()}`);
    expect((await a.$(sel)) !== null, `${sel} missing`);
    expect((await a.$$('h1')).length === 1, 'not exactly one h1');
    await shot(a, name);
    await accessible(admin.context, path);
  });
}

await check('a resource named like markup is rendered as text', async () => {
  const evil = env('EVIL_NAME');
  await a.goto(`${URL}/objects/resource`);
  const cells = await a.$$eval('#objects-table td, #objects-table a', (els) => els.map((e) => e.textContent));
  expect(cells.some((t) => t.includes(evil)), `the name ${evil} is not shown as text`);
  const injected = await a.$$eval('#objects-table script', (els) => els.length);
  expect(injected === 0, 'a script element came from a name');
  await a.goto(`${URL}/objects/resource/${encodeURIComponent(evil)}`);
  expect((await a.innerText('body')).includes(evil), 'its page does not show the name');
});

await check('explain: which grant decided', async () => {
  await a.goto(`${URL}/explain`);
  await a.fill('#explain-from', 'alice-laptop');
  await a.fill('#explain-to', '198.18.1.5:443/tcp');
  await Promise.all([a.waitForNavigation(), a.click('#explain-form button[type=submit]')]);
  const verdict = await text(a, '#explain-verdict');
  expect(/Allow/i.test(verdict), `verdict: ${verdict || (await text(a, '#error'))}`);
  expect((await text(a, '#explain-rule')).includes('engineering-web'), `rule: ${await text(a, '#explain-rule')}`);
  await shot(a, 'explain-answer');
});

await check('a live event arrives on the open Activity page', async () => {
  await a.goto(`${URL}/activity`);
  const before = await a.$$eval('#activity-table tbody tr', (r) => r.length);
  // The test harness reports a new event every 300 ms while this runs.
  await a.waitForFunction(
    (n) => document.querySelectorAll('#activity-table tbody tr').length > n,
    before,
    { timeout: 3000 },
  );
  await shot(a, 'activity-live');
});

await check('apply a policy through the plan page with a fresh TOTP code', async () => {
  await a.goto(`${URL}/policy`);
  await a.fill('#plan-policy', env('NEW_POLICY'));
  await Promise.all([a.waitForNavigation(), a.click('#plan-form button[type=submit]')]);
  expect((await a.$('#apply-form')) !== null, `no plan: ${await text(a, '#plan-error')}`);
  expect((await a.$('#plan-revisions')) !== null, 'the plan does not show its revisions');
  await shot(a, 'plan');
  await accessible(admin.context, '/policy');
  // The login used this step's code: the next step's is the fresh one.
  await a.fill('#apply-totp', totp(env('ADMIN_SECRET'), 1));
  await Promise.all([a.waitForNavigation(), a.click('#apply-form button[type=submit]')]);
  expect((await a.$('#applied')) !== null, `not applied: ${await text(a, '#error')}`);
  await a.goto(`${URL}/objects/resource/browser-added`);
  expect((await a.$('#object-toml')) !== null, 'the applied resource is not there');
});

await check('the revisions list and the difference between the last two', async () => {
  const r = await a.goto(`${URL}/policy/revisions`);
  expect(r.status() === 200, `status ${r.status()}`);
  const rows = await a.$$eval('#revisions-table tbody tr', (els) => els.length);
  expect(rows >= 2, `${rows} revisions listed`);
  await accessible(admin.context, '/policy/revisions');
  // The newest revision's "from N-1" link.
  await Promise.all([a.waitForNavigation(), a.click('#revisions-table tbody tr:first-child td:last-child a')]);
  const added = await a.$$eval('#diff .diff-add', (els) => els.map((e) => e.textContent));
  expect(added.some((t) => t.includes('browser-added')), `added lines: ${added.join(' | ')}`);
  await shot(a, 'policy-diff');
  await accessible(admin.context, a.url().slice(URL.length));
});

await check('a POST without the CSRF token is refused', async () => {
  const r = await a.request.post(`${URL}/keys/create`, {
    form: { name: 'no-csrf', totp: totp(env('ADMIN_SECRET'), 1) },
  });
  expect(r.status() === 403, `status ${r.status()}`);
  await a.goto(`${URL}/keys`);
  expect(!(await a.innerText('#keys-table')).includes('no-csrf'), 'the key was made');
});

const admin2 = await session();
await check('revoke an agent with a fresh TOTP code', async () => {
  const p = admin2.page;
  const agent = env('REVOKE_AGENT');
  await login(p, env('ADMIN2_USER'), env('ADMIN2_SECRET'));
  await p.goto(`${URL}/agents`);
  expect((await p.$(`#revoke-${agent}`)) !== null, `no revoke form for ${agent}`);
  await p.fill(`#revoke-totp-${agent}`, totp(env('ADMIN2_SECRET'), 1));
  await Promise.all([p.waitForNavigation(), p.click(`#revoke-${agent} button[type=submit]`)]);
  expect((await text(p, '#done')).includes('revoked'), `not revoked: ${await text(p, '#error')}`);
  await p.goto(`${URL}/agents`);
  expect((await p.$(`#revoke-${agent}`)) === null, 'the agent can still be revoked');
});

const auditor = await session();
await check('the auditor reads everything and is refused every action', async () => {
  const p = auditor.page;
  await login(p, env('AUDITOR_USER'), env('AUDITOR_SECRET'));
  for (const path of ['/', '/audit', '/activity', '/agents', '/policy']) {
    const r = await p.goto(`${URL}${path}`);
    expect(r.status() === 200, `${path}: status ${r.status()}`);
  }
  await p.goto(`${URL}/agents`);
  expect((await p.$$('form[action="/agents/revoke"]')).length === 0, 'revoke forms shown to an auditor');
  await p.goto(`${URL}/policy`);
  expect((await p.$('#plan-form')) === null, 'the plan form shown to an auditor');
  // The same POST an admin's form makes, with the auditor's own CSRF token: refused.
  const csrf = await p.$eval('#logout-form input[name=csrf]', (e) => e.value);
  const r = await p.request.post(`${URL}/policy/plan`, { form: { csrf, policy: env('NEW_POLICY') } });
  expect(r.status() === 403, `plan as auditor: status ${r.status()}`);
  const k = await p.request.get(`${URL}/keys`);
  expect(k.status() === 403, `keys page as auditor: status ${k.status()}`);
});

await check('an idle session must log in again', async () => {
  const p = auditor.page;
  await p.goto(`${URL}/`);
  expect(!p.url().includes('/login'), 'logged out too early');
  await p.waitForTimeout(Number(env('IDLE_MS')) + 1500);
  await p.goto(`${URL}/`);
  expect(p.url().includes('/login'), `still logged in after the idle timeout: ${p.url()}`);
});

await browser.close();
console.log(`${passed.length} checks passed, ${failures.length} failed`);
for (const f of failures) console.log(`FAIL ${f}`);
process.exit(failures.length === 0 ? 0 : 1);
