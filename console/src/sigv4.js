// AWS Signature Version 4 in the browser, for Ember's API (service "lambda"), the same
// canonicalisation as botocore and crates/sigv4: double-encoded path segments, sorted query,
// signed headers host and x-amz-date.
//
// The secret access key is used once, at sign-in, to derive the day's signing key
// (HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "lambda"), "aws4_request")), and then
// dropped: only that key, valid for one UTC day, one region and this one service, is kept (in
// the tab's sessionStorage). It cannot be turned back into the secret.
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex, hexToBytes, utf8ToBytes } from '@noble/hashes/utils.js';

export const SERVICE = 'lambda';

/** RFC 3986 encoding, as SigV4 wants it (everything but A-Z a-z 0-9 - _ . ~). */
export function encode(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/** `20261206` and `20261206T184400Z` for a Date. */
export function stamps(now) {
  const iso = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  return { date: iso.slice(0, 8), amz: iso };
}

/** The day's signing key, hex. */
export function signingKey(secret, date, region) {
  const k = (key, msg) => hmac(sha256, key, utf8ToBytes(msg));
  return bytesToHex(k(k(k(k(utf8ToBytes('AWS4' + secret), date), region), SERVICE), 'aws4_request'));
}

/** The canonical query string of `[key, value]` pairs. */
export function canonicalQuery(pairs) {
  return pairs
    .map(([k, v]) => [encode(k), encode(v)])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

/**
 * Signs a request. `path` is as sent (its segments already encoded), `query` the canonical
 * query string, `body` a Uint8Array. Returns the headers to send with it.
 */
export function sign({ method, host, path, query, body }, { accessKeyId, region, date, key }, now) {
  const t = stamps(now);
  if (t.date !== date) throw new Error('signing key expired');
  const canonicalUri = path.split('/').map(encode).join('/');
  const payloadHash = bytesToHex(sha256(body));
  const canonical = [
    method,
    canonicalUri,
    query,
    `host:${host}\nx-amz-date:${t.amz}\n`,
    'host;x-amz-date',
    payloadHash,
  ].join('\n');
  const scope = `${date}/${region}/${SERVICE}/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', t.amz, scope, bytesToHex(sha256(utf8ToBytes(canonical)))].join('\n');
  const signature = bytesToHex(hmac(sha256, hexToBytes(key), utf8ToBytes(toSign)));
  return {
    'X-Amz-Date': t.amz,
    Authorization: `AWS4-HMAC-SHA256 Credential=${accessKeyId}/${scope}, SignedHeaders=host;x-amz-date, Signature=${signature}`,
  };
}
