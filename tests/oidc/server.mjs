// tokend's end-to-end OAuth2 server: panva's oidc-provider (an independently
// written, OpenID-certified implementation) set up with rotating refresh
// tokens and reuse detection, a login that needs no human, statistics and
// fault injection on the token endpoint.
//
//   node server.mjs [--port N] [--access-ttl S] [--refresh-ttl S] [--discovery oidc|rfc8414]
//                   [--device-flow 0|1] [--device-code-ttl S] [--device-interval S]
//   PORT=0 ACCESS_TTL=5 node server.mjs
//
// stdout carries exactly one line, "LISTENING http://127.0.0.1:<port>" (the
// issuer); everything else goes to stderr. SIGTERM/SIGINT stop it (exit 0).
// See README.md for the clients, endpoints and the test-only /test/* API.
import crypto from 'node:crypto';
import http from 'node:http';
import querystring from 'node:querystring';

// oidc-provider prints its notices with console.info: keep stdout clean.
console.log = console.error;
console.info = console.error;

// ---- settings: --flag value / --flag=value, else the environment -----------
function setting(flag, env, fallback) {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === `--${flag}` && i + 1 < argv.length) return argv[i + 1];
    if (argv[i].startsWith(`--${flag}=`)) return argv[i].slice(flag.length + 3);
  }
  return process.env[env] ?? fallback;
}
function nonNegativeInt(name, value) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`[oidc] ${name} must be a non-negative integer, got ${value}`);
    process.exit(2);
  }
  return n;
}
const port = nonNegativeInt('PORT', setting('port', 'PORT', '0'));
const accessTtl = Math.max(1, nonNegativeInt('ACCESS_TTL', setting('access-ttl', 'ACCESS_TTL', '5')));
const refreshTtl = Math.max(1, nonNegativeInt('REFRESH_TTL', setting('refresh-ttl', 'REFRESH_TTL', String(14 * 24 * 3600))));
// Keycloak's refresh_expires_in in token answers (1, the default), or not
// (0: a client must introspect the refresh token for its exp).
const sendRefreshExpiresIn = !['0', 'false', 'no'].includes(String(setting('refresh-expires-in', 'REFRESH_EXPIRES_IN', '1')).toLowerCase());
// The device authorization grant (RFC 8628): how long a device code lives,
// and the polling interval announced in the device authorization response
// (oidc-provider announces none, which means 5 s to a client).
const deviceFlow = !['0', 'false', 'no'].includes(String(setting('device-flow', 'DEVICE_FLOW', '1')).toLowerCase());
const deviceCodeTtl = Math.max(1, nonNegativeInt('DEVICE_CODE_TTL', setting('device-code-ttl', 'DEVICE_CODE_TTL', '600')));
const deviceIntervalSetting = setting('device-interval', 'DEVICE_INTERVAL', '');
const deviceInterval = deviceIntervalSetting === '' ? undefined : nonNegativeInt('DEVICE_INTERVAL', deviceIntervalSetting);
const debug = Boolean(process.env.OIDC_DEBUG);
// Where the metadata is served: "oidc" (default) at /.well-known/openid-configuration
// as oidc-provider does; "rfc8414" only at /.well-known/oauth-authorization-server
// (openid-configuration answers 404), like a plain OAuth2 server.
const discovery = setting('discovery', 'DISCOVERY', 'oidc');
if (!['oidc', 'rfc8414'].includes(discovery)) {
  console.error(`[oidc] DISCOVERY must be oidc or rfc8414, got ${discovery}`);
  process.exit(2);
}

const { default: Provider } = await import('oidc-provider');
const log = (...args) => console.error('[oidc]', ...args);
const trace = (...args) => { if (debug) log(...args); };

// ---- clients -------------------------------------------------------------------
// application_type "native": oidc-provider then accepts a registered
// http://127.0.0.1/..., http://localhost/... or http://[::1]/... redirect URI
// with ANY port (RFC 8252 7.3); the path must match exactly.
const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';
const loopbackRedirects = [
  'http://127.0.0.1/callback',
  'http://localhost/callback',
  'http://[::1]/callback',
  'http://127.0.0.1/paste-callback',
  ...(process.env.EXTRA_REDIRECT_URIS ?? '').split(/[\s,]+/).filter(Boolean),
];
const clients = [
  {
    client_id: 'tokend-test',
    client_secret: 'tokend-test-secret',
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token', ...(deviceFlow ? [DEVICE_CODE] : [])],
    response_types: ['code'],
    redirect_uris: loopbackRedirects,
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'tokend-basic',
    client_secret: 'tokend-basic-secret',
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token', ...(deviceFlow ? [DEVICE_CODE] : [])],
    response_types: ['code'],
    redirect_uris: loopbackRedirects,
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'tokend-cc',
    client_secret: 'tokend-cc-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
];

// Scopes the provider knows. A requested scope not in this list is silently
// dropped from the grant (oidc-provider treats it as a resource-server scope).
const scopes = [
  'openid', 'offline_access', 'profile', 'email', 'api', 'read', 'write',
  ...(process.env.EXTRA_SCOPES ?? '').split(/[\s,]+/).filter(Boolean),
];

// An ephemeral ES256 key for ID tokens (quick to make, unlike RSA; without a
// key oidc-provider would use its development-only keys).
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'tokend-e2e', use: 'sig', alg: 'ES256' };

const configuration = {
  clients,
  clientDefaults: { grant_types: ['authorization_code'], response_types: ['code'], id_token_signed_response_alg: 'ES256' },
  scopes: [...new Set(scopes)],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // PKCE allowed (S256 only; code_challenge_method must be sent), not required.
  pkce: { required: () => false },
  // Every refresh returns a new refresh token; the presented one is consumed.
  // Presenting a consumed one again fails with invalid_grant and revokes the
  // whole grant (oidc-provider's lib/actions/grants/refresh_token.js).
  rotateRefreshToken: true,
  // Refresh tokens for every auth-code client, offline_access or not, and not
  // bound to the browser session.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    AuthorizationCode: 300,
    IdToken: 3600,
    RefreshToken: refreshTtl,
    Grant: refreshTtl,
    Interaction: 600,
    Session: 3600,
    DeviceCode: deviceCodeTtl,
  },
  features: {
    devInteractions: { enabled: false },
    // Any authenticated client may introspect any token.
    introspection: { enabled: true, allowedPolicy: async () => true },
    // A client may revoke only its own tokens (oidc-provider's default rule).
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    clientCredentials: { enabled: true },
    userinfo: { enabled: true },
    // RFC 8628, with pages a script can drive (see README.md, "Device flow"):
    // each carries a marker line and oidc-provider's own forms.
    deviceFlow: {
      enabled: deviceFlow,
      userCodeInputSource: async (ctx, form, out, err) => {
        let marker = 'DEVICE CODE INPUT';
        if (err?.name === 'AbortedError') marker = 'DEVICE LOGIN ABORTED';
        else if (err?.userCode || err?.name === 'NoCodeError') marker = 'DEVICE CODE INVALID';
        else if (err) marker = `DEVICE LOGIN ERROR ${err.name ?? ''}`.trim();
        ctx.body = devicePage(marker, form);
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = devicePage(`DEVICE CODE CONFIRM ${userCode} ${client.clientId}`, form);
      },
      successSource: async (ctx) => {
        ctx.body = devicePage(`DEVICE LOGIN APPROVED ${ctx.oidc.client.clientId}`, '');
      },
    },
  },
  clientBasedCORS: () => false,
  // Errors that cannot be redirected (bad client_id / redirect_uri) and token
  // errors asked for as HTML: plain JSON, no HTML page.
  renderError: async (ctx, out) => {
    ctx.type = 'application/json; charset=utf-8';
    ctx.body = out;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: `${sub}@example.test`, email_verified: true, name: sub }),
  }),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
};

// A device-flow page: the marker alone on its own line, then the form.
function devicePage(marker, form) {
  const safe = marker.replace(/[<>&"]/g, '');
  return `<!doctype html><meta charset=utf-8><title>device</title>\n<p id=marker>\n${safe}\n</p>\n${form}\n`;
}

// ---- statistics ----------------------------------------------------------------
const GRANTS = ['authorization_code', 'refresh_token', 'client_credentials', DEVICE_CODE];
const perGrant = () => Object.fromEntries(GRANTS.map((g) => [g, 0]));
const fresh = () => ({
  token_posts: 0, // every POST /token, faulted or not
  token_posts_by_grant: perGrant(),
  token_requests: perGrant(), // POST /token handed to oidc-provider (success or error)
  token_success: perGrant(),
  token_errors: perGrant(),
  faulted: 0, // POST /token answered (or dropped) by the fault injector
  faulted_by_grant: perGrant(),
  delayed: 0, // slow/delay requests processed after the delay (client still there)
  held: 0, // hold requests: processed at once, answer held delay_ms
  introspections: 0, // POST /token/introspection
  introspected_active: 0, // ... answered active: true
  introspected_inactive_rotated: 0, // ... active: false for a refresh token consumed by a rotation
  introspected_inactive_other: 0, // ... active: false for any other token (expired, unknown, revoked grant)
  refresh_token_reuse: 0, // refresh requests presenting an already-rotated refresh token
  grants_revoked: 0,
  device_authorizations: 0, // POST /device/auth answered with codes
  errors: [], // {grant_type, error, error_description}
  grant_errors: [], // the same, as "grant_type: error detail" strings
});
let stats = fresh();
const bump = (map, key) => { map[key ?? 'unknown'] = (map[key ?? 'unknown'] ?? 0) + 1; };
const rotated = new Set(); // refresh tokens consumed by a rotation (kept across /test/reset)
const MAX_ERRORS = 1000;
function recordError(gt, err) {
  const e = { grant_type: gt ?? null, error: err.error ?? 'server_error', error_description: err.error_detail ?? err.error_description ?? err.message };
  stats.errors.push(e);
  stats.grant_errors.push(`${e.grant_type}: ${e.error} ${e.error_description ?? ''}`.trim());
  if (stats.errors.length > MAX_ERRORS) { stats.errors.shift(); stats.grant_errors.shift(); }
}

// ---- fault injection -----------------------------------------------------------
const FAULT_MODES = new Set(['none', '503', '429', 'drop', 'slow', 'delay', 'stall', 'hold', 'body', 'garbage', 'invalid_grant']);
let fault = { mode: 'none' };

// Whether this token request gets the current fault; counts it down.
function takeFault(grantType) {
  if (fault.mode === 'none') return null;
  if (fault.grant_type && fault.grant_type !== grantType) return null;
  const f = { ...fault };
  if (typeof fault.count === 'number') {
    fault.count -= 1;
    if (fault.count <= 0) fault = { mode: 'none' };
  }
  return f;
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

// Applies fault `f`. Returns true when the request was answered (or dropped)
// here and must not reach oidc-provider.
async function applyFault(f, req, res) {
  const json = (status, body, headers = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
    res.end(JSON.stringify(body));
  };
  switch (f.mode) {
    case '503': json(503, { error: 'temporarily_unavailable', error_description: 'fault injected by the test' }); return true;
    case '429': json(429, { error: 'slow_down', error_description: 'fault injected by the test' }, { 'retry-after': String(f.retry_after ?? 1) }); return true;
    case 'garbage': res.writeHead(200, { 'content-type': 'text/html' }); res.end('<html>oops</html>'); return true;
    case 'invalid_grant': json(400, { error: 'invalid_grant', error_description: 'fault injected by the test' }); return true;
    case 'drop': req.socket.destroy(); return true;
    case 'body': json(f.status ?? 200, f.body ?? {}); return true;
    case 'hold': {
      // Processed at once (a refresh token rotates), the answer held
      // delay_ms: a client killed meanwhile never learns the new pair.
      const end = res.end.bind(res);
      res.end = (...args) => { setTimeout(() => { if (!res.destroyed) end(...args); }, f.delay_ms ?? 5000); return res; };
      stats.held += 1;
      return false;
    }
    case 'stall':
      // Held, then refused without processing: nothing is spent.
      await sleep(f.delay_ms ?? 5000);
      if (!res.destroyed && !res.writableEnded) json(504, { error: 'temporarily_unavailable', error_description: 'fault injected by the test' });
      return true;
    case 'slow':
    case 'delay': {
      // Held delay_ms, then processed normally -- unless the client hung up
      // meanwhile: a request nobody waits for any more is not processed, so it
      // spends no refresh token.
      let gone = false;
      const onClose = () => { gone = true; };
      res.once('close', onClose);
      await sleep(f.delay_ms ?? 5000);
      res.off('close', onClose);
      return gone || res.destroyed || req.socket.destroyed;
    }
    default: return false;
  }
}

// ---- the HTTP server ------------------------------------------------------------
let provider;
let callback;
let issuer;

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// oidc-provider takes client_secret_basic and client_secret_post as one
// family (either works for a client registered with either). The token
// endpoint here holds each client to its registered method, so a test sees
// which one the client used.
const strict = !['0', 'false', 'no'].includes(String(process.env.STRICT_CLIENT_AUTH ?? '1').toLowerCase());
const registeredMethod = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));
function strictClientAuth(req, form) {
  if (!strict) return undefined;
  const header = req.headers.authorization;
  let used;
  let clientId;
  if (header && /^basic /i.test(header)) {
    used = 'client_secret_basic';
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    try { clientId = decodeURIComponent((i === -1 ? decoded : decoded.slice(0, i)).replace(/\+/g, ' ')); } catch { clientId = undefined; }
  } else if (typeof form.client_secret === 'string') {
    used = 'client_secret_post';
    clientId = form.client_id;
  }
  const registered = registeredMethod.get(clientId);
  if (!used || !registered || used === registered) return undefined; // oidc-provider judges the rest
  return `${clientId} authenticated with ${used}, but is registered with ${registered}`;
}

async function tokenEndpoint(req, res) {
  // Read the form here (to count it and to pick faults by grant type), then
  // hand it to oidc-provider as an already-parsed body (req.body).
  const raw = await readBody(req);
  let form = {};
  try { form = querystring.parse(raw); } catch { form = {}; }
  const gt = typeof form.grant_type === 'string' ? form.grant_type : undefined;
  stats.token_posts += 1;
  bump(stats.token_posts_by_grant, gt);
  if (gt === 'refresh_token' && typeof form.refresh_token === 'string' && rotated.has(form.refresh_token)) {
    stats.refresh_token_reuse += 1;
    log('refresh token REUSED:', form.refresh_token.slice(0, 8));
  }
  const f = takeFault(gt);
  if (f) {
    log(`token ${gt}: fault ${f.mode}`);
    if (await applyFault(f, req, res)) {
      stats.faulted += 1;
      bump(stats.faulted_by_grant, gt);
      return;
    }
    if (f.mode === 'slow' || f.mode === 'delay') stats.delayed += 1;
  }
  const authError = strictClientAuth(req, form);
  if (authError) {
    stats.token_requests[gt ?? 'unknown'] = (stats.token_requests[gt ?? 'unknown'] ?? 0) + 1;
    bump(stats.token_errors, gt);
    recordError(gt, { error: 'invalid_client', error_detail: authError });
    log(`token ${gt}: invalid_client (${authError})`);
    res.writeHead(401, { 'content-type': 'application/json', 'cache-control': 'no-store', 'www-authenticate': 'Basic realm="tokend-e2e"' });
    res.end(JSON.stringify({ error: 'invalid_client', error_description: 'client authentication failed' }));
    return;
  }
  stats.token_requests[gt ?? 'unknown'] = (stats.token_requests[gt ?? 'unknown'] ?? 0) + 1;
  req.body = raw;
  res.once('finish', () => log(`token ${gt}: ${res.statusCode}`));
  if (sendRefreshExpiresIn) withRefreshExpiresIn(res);
  return callback(req, res);
}

// When a refresh token stops working (Unix seconds): its own expiry or its
// grant's, whichever comes first (a rotated refresh token gets a fresh
// REFRESH_TTL, but the grant it belongs to does not: the grant's end is when
// a login is needed again). Undefined for an unknown token.
async function refreshTokenEnd(value) {
  const rt = await provider.RefreshToken.find(value);
  if (!rt) return undefined;
  const grant = await provider.Grant.find(rt.grantId);
  return Math.min(rt.exp, grant?.exp ?? Infinity);
}

// Adds Keycloak's refresh_expires_in (seconds until refreshTokenEnd) to a
// token answer that carries a refresh token. The answer waits for the look-up.
function withRefreshExpiresIn(res) {
  const end = res.end.bind(res);
  res.end = (body, ...rest) => {
    let parsed;
    try { parsed = JSON.parse(String(body ?? '')); } catch { return end(body, ...rest); }
    if (!parsed || typeof parsed.refresh_token !== 'string') return end(body, ...rest);
    refreshTokenEnd(parsed.refresh_token).then((exp) => {
      if (exp !== undefined && Number.isFinite(exp)) {
        parsed.refresh_expires_in = Math.max(1, exp - Math.floor(Date.now() / 1000));
      }
      const out = JSON.stringify(parsed);
      if (!res.headersSent) res.setHeader('content-length', Buffer.byteLength(out));
      end(out, ...rest);
    }, () => end(body, ...rest));
    return res;
  };
}

// Counts introspections and what they answered, and whether an inactive
// refresh token was one consumed by a rotation: a client that resolves an
// interrupted refresh by introspection must only give up a grant that really
// rotated.
async function introspectionEndpoint(req, res) {
  const raw = await readBody(req);
  let form = {};
  try { form = querystring.parse(raw); } catch { form = {}; }
  const wasRotated = typeof form.token === 'string' && rotated.has(form.token);
  stats.introspections += 1;
  // A refresh token's exp is when it stops working, its grant's end included
  // (see refreshTokenEnd), as Keycloak reports it.
  const refreshEnd = typeof form.token === 'string' ? await refreshTokenEnd(form.token).catch(() => undefined) : undefined;
  const end = res.end.bind(res);
  res.end = (body, ...rest) => {
    let active;
    let parsed;
    try { parsed = JSON.parse(String(body ?? '')); active = parsed.active; } catch { active = undefined; }
    if (active === true && refreshEnd !== undefined && Number.isFinite(refreshEnd)) {
      parsed.exp = refreshEnd;
      body = JSON.stringify(parsed);
      if (!res.headersSent) res.setHeader('content-length', Buffer.byteLength(body));
    }
    if (active === true) stats.introspected_active += 1;
    else if (active === false && wasRotated) stats.introspected_inactive_rotated += 1;
    else if (active === false) stats.introspected_inactive_other += 1;
    log(`introspection: active=${active} rotated=${wasRotated}`);
    return end(body, ...rest);
  };
  req.body = raw;
  return callback(req, res);
}

// Non-interactive login: "the user" logs in as login_hint (default
// "test-user") and consents to everything asked -- unless login_hint=deny.
async function interaction(req, res) {
  if (req.method !== 'GET') { res.writeHead(405); res.end(); return; }
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  trace('interaction', details.uid, prompt.name, prompt.reasons);
  if (params.login_hint === 'deny') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'the test user denied access',
    }, { mergeWithLastSubmission: false });
    return;
  }
  const accountId = session?.accountId ?? (params.login_hint || 'test-user');
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  grant ??= new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  const d = prompt.details ?? {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, s] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(indicator, s.join(' '));
  const grantId = await grant.save();
  const result = { consent: { grantId } };
  if (prompt.name === 'login' || !session?.accountId) result.login = { accountId };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

// ---- the resource API at /api/* (what tokend's proxy is tested against) ----
// It behaves as Uptempo's API does: a request whose bearer token is not an
// active access token of this server (expired, unknown) -- or one the test
// told it to stop accepting, while the grant stays valid -- gets 403. It
// records every request (token values as numbers, never the token itself).
const apiFresh = () => ({ requests: [], mode: 'normal', delay_ms: 0, refused: new Set(), tokens: new Map() });
let api = apiFresh();

function tokenNumber(token) {
  if (!api.tokens.has(token)) api.tokens.set(token, api.tokens.size + 1);
  return api.tokens.get(token);
}

async function countBody(req) {
  let bytes = 0;
  const chunks = [];
  for await (const chunk of req) {
    bytes += chunk.length;
    if (bytes <= 64 * 1024) chunks.push(chunk);
  }
  return { bytes, text: bytes <= 64 * 1024 ? Buffer.concat(chunks).toString('utf8') : undefined };
}

async function resourceApi(req, res, url) {
  const auth = req.headers.authorization ?? '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : undefined;
  const record = {
    method: req.method,
    path: url.pathname,
    query: url.search,
    token: token === undefined ? null : tokenNumber(token),
    authorization_scheme: auth.split(' ')[0] || null,
    headers: Object.fromEntries(Object.entries(req.headers).filter(([k]) => k.startsWith('x-') || k === 'content-type' || k === 'host' || k === 'proxy-authorization' || k === 'connection')),
  };
  api.requests.push(record);
  const body = await countBody(req);
  record.body_bytes = body.bytes;
  const json = (status, obj, extra = {}) => { record.status = status; res.writeHead(status, { 'content-type': 'application/json', ...extra }); res.end(JSON.stringify(obj)); };
  if (api.mode === 'slow') await new Promise((r) => setTimeout(r, api.delay_ms));
  if (api.mode === 'redirect') return json(302, { moved: true }, { location: `${issuer}/api/elsewhere` });
  if (api.mode === 'always403') return json(403, { error: 'forbidden' });
  const found = token === undefined || api.refused.has(token) ? undefined : await provider.AccessToken.find(token);
  if (!found || found.isExpired) return json(403, { error: 'invalid_token' });
  if (url.pathname === '/api/download') {
    let left = Number(url.searchParams.get('bytes') ?? '0');
    // stall_after=N: send N bytes, then nothing more, never ending.
    const stallAfter = url.searchParams.get('stall_after');
    if (stallAfter !== null) {
      record.status = 200;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(left) });
      res.write(Buffer.alloc(Number(stallAfter), 0x61));
      return;
    }
    record.status = 200;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(left) });
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const more = () => {
      while (left > 0) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= piece.length;
        if (!res.write(piece)) { res.once('drain', more); return; }
      }
      res.end();
    };
    return more();
  }
  return json(200, { ok: true, method: req.method, path: url.pathname, query: url.search, body: body.text ?? null, body_bytes: body.bytes, account: found.accountId });
}

async function testResourceApi(req, res, url, send) {
  if (req.method === 'GET') {
    return send(200, { requests: api.requests, mode: api.mode, tokens: api.tokens.size });
  }
  let f;
  try { f = await readJson(req); } catch (e) { return send(400, { error: `bad JSON: ${e.message}` }); }
  if (f.reset) api = apiFresh();
  // "The API stops accepting the tokens it has seen" (an invalidated token).
  if (f.refuse_seen) for (const t of api.tokens.keys()) api.refused.add(t);
  if (f.mode !== undefined) {
    if (!['normal', 'always403', 'redirect', 'slow'].includes(f.mode)) return send(400, { error: `unknown mode ${f.mode}` });
    api.mode = f.mode;
  }
  if (f.delay_ms !== undefined) api.delay_ms = Number(f.delay_ms);
  return send(200, { ok: true, mode: api.mode });
}

async function readJson(req) {
  const body = await readBody(req);
  return body.trim() ? JSON.parse(body) : {};
}

async function testApi(req, res, url) {
  const send = (status, obj) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(JSON.stringify(obj)); };
  if (url.pathname === '/test/stats' && req.method === 'GET') return send(200, { ...stats, fault });
  if (url.pathname === '/test/api') return testResourceApi(req, res, url, send);
  if (url.pathname === '/test/reset' && req.method === 'POST') {
    stats = fresh();
    fault = { mode: 'none' };
    return send(200, { ok: true });
  }
  if (url.pathname === '/test/fault' && req.method === 'POST') {
    let f;
    try { f = await readJson(req); } catch (e) { return send(400, { error: `bad JSON: ${e.message}` }); }
    const mode = String(f.mode ?? 'none');
    if (!FAULT_MODES.has(mode)) return send(400, { error: `unknown mode ${mode}`, modes: [...FAULT_MODES] });
    const count = f.count === undefined || f.count === null ? undefined : Number(f.count);
    if (mode === 'none' || count === 0) fault = { mode: 'none' };
    else {
      fault = {
        mode,
        count,
        retry_after: f.retry_after === undefined ? undefined : Number(f.retry_after),
        delay_ms: f.delay_ms === undefined ? undefined : Number(f.delay_ms),
        status: f.status === undefined ? undefined : Number(f.status),
        body: f.body,
        grant_type: f.grant_type ?? undefined,
      };
    }
    log('fault set', JSON.stringify(fault));
    return send(200, { ok: true, fault });
  }
  return send(404, { error: 'not found' });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    trace(req.method, url.pathname);
    if (url.pathname.startsWith('/test/')) return await testApi(req, res, url);
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res);
    if (url.pathname.startsWith('/api/')) return await resourceApi(req, res, url);
    if (url.pathname === '/token' && req.method === 'POST') return await tokenEndpoint(req, res);
    if (url.pathname === '/token/introspection' && req.method === 'POST') return await introspectionEndpoint(req, res);
    if (discovery === 'rfc8414') {
      if (url.pathname === '/.well-known/openid-configuration') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'not found' }));
        return;
      }
      // The same document oidc-provider makes, at the RFC 8414 URL.
      if (url.pathname === '/.well-known/oauth-authorization-server') req.url = `/.well-known/openid-configuration${url.search}`;
    }
    return callback(req, res);
  } catch (err) {
    log('handler error:', err?.message ?? err);
    if (!res.headersSent && !res.destroyed) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'invalid_request', error_description: String(err?.message ?? err) }));
    }
  }
});
// Keep idle connections longer than clients' pools usually do, so a client
// never races a server-side idle close (SIGTERM still closes them at once).
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;

server.on('error', (err) => { log('listen failed:', err.message); process.exit(1); });
server.listen(port, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, configuration);
  provider.on('grant.success', (ctx) => bump(stats.token_success, ctx.oidc.params?.grant_type));
  provider.on('grant.error', (ctx, err) => {
    const gt = ctx.oidc?.params?.grant_type;
    bump(stats.token_errors, gt);
    recordError(gt, err);
    log(`token ${gt}: ${err.error} (${err.error_detail ?? err.error_description ?? ''})`);
  });
  provider.on('server_error', (ctx, err) => {
    if (ctx.oidc?.route === 'token') bump(stats.token_errors, ctx.oidc?.params?.grant_type);
    recordError(ctx.oidc?.params?.grant_type, err);
    log('server_error', err);
  });
  provider.on('refresh_token.consumed', (token) => rotated.add(token.jti));
  provider.on('grant.revoked', (ctx, grantId) => { stats.grants_revoked += 1; log('grant revoked', grantId); });
  provider.on('authorization.error', (ctx, err) => trace('authorization error', err.error, err.error_description));
  // oidc-provider sends no `interval`; DEVICE_INTERVAL adds one (the body is
  // still this object when the event fires).
  provider.on('device_authorization.success', (ctx, body) => {
    stats.device_authorizations += 1;
    if (deviceInterval !== undefined) body.interval = deviceInterval;
  });
  callback = provider.callback();
  process.stdout.write(`LISTENING ${issuer}\n`);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
