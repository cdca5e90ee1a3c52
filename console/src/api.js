// Ember's API as the console calls it: every request signed with the tab's day key (sigv4.js).
import { canonicalQuery, encode, sign, signingKey, stamps } from './sigv4.js';

const KEY = 'ember-console-session';

/** The tab's session: {accessKeyId, region, date, key, accountId, admin}, or null. */
export function session() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    if (s && s.date === stamps(new Date()).date) return s;
  } catch {
    /* unreadable: signed out */
  }
  sessionStorage.removeItem(KEY);
  return null;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** An API error: the AWS error type and message Ember answered. */
export class ApiError extends Error {
  constructor(status, type, message) {
    super(message || type || `HTTP ${status}`);
    this.status = status;
    this.type = type;
  }
}

/**
 * Calls the API: `segments` are the path's parts (each encoded here), `query` an object.
 * Answers {status, headers, body (text)}; throws ApiError for a 4xx/5xx.
 */
export async function call(method, segments, { query = {}, body, headers = {}, creds } = {}) {
  const s = creds || session();
  if (!s) {
    // The tab's key is gone (signed out elsewhere) or was for a past UTC day: back to sign-in.
    window.dispatchEvent(new Event('ember-signed-out'));
    throw new ApiError(401, 'SignedOut', 'Signed out: the signing key is for another day');
  }
  const path = '/' + segments.map(encode).join('/');
  const pairs = Object.entries(query).filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => [k, String(v)]);
  const q = canonicalQuery(pairs);
  const bytes = body === undefined ? new Uint8Array() : new TextEncoder().encode(body);
  const signed = sign({ method, host: location.host, path, query: q, body: bytes }, s, new Date());
  const response = await fetch(path + (q ? '?' + q : ''), {
    method,
    headers: { ...headers, ...signed, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    body: body === undefined ? undefined : bytes,
    credentials: 'omit',
    cache: 'no-store',
  });
  const text = await response.text();
  if (response.status >= 400) {
    let type = response.headers.get('x-amzn-ErrorType') || '';
    let message = text;
    try {
      const j = JSON.parse(text);
      type = type || j.Type || j.__type;
      message = j.message || j.Message || text;
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, type.split(':')[0], message);
  }
  return { status: response.status, headers: response.headers, body: text };
}

export async function json(method, segments, options) {
  const r = await call(method, segments, options);
  return r.body ? JSON.parse(r.body) : null;
}

/** Signs in: derives the day's key from the secret, checks it with a signed call, keeps it. */
export async function signIn(accessKeyId, secret) {
  const config = await (await fetch('/console/config.json', { credentials: 'omit' })).json();
  const date = stamps(new Date()).date;
  const creds = { accessKeyId: accessKeyId.trim(), region: config.Region, date, key: signingKey(secret.trim(), date, config.Region) };
  const me = await json('GET', ['ember', 'v1', 'console', 'whoami'], { creds });
  const s = { ...creds, accountId: me.AccountId, admin: me.Admin };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

/** Every function of the account (ListFunctions, all pages). */
export async function listFunctions() {
  const out = [];
  let marker;
  do {
    const page = await json('GET', ['2015-03-31', 'functions'], { query: { Marker: marker, MaxItems: 50 } });
    out.push(...page.Functions);
    marker = page.NextMarker;
  } while (marker);
  return out;
}
