// The identity provider of scripts/sso-e2e.sh: node-oidc-provider (an OpenID Certified
// implementation, https://github.com/panva/node-oidc-provider) on loopback, configured the way a
// company IdP is for an MCP resource:
//
//   node provider.mjs            (environment below; prints "ready <issuer>" once listening)
//
//   PORT       port on 127.0.0.1; the issuer is http://127.0.0.1:PORT
//   RESOURCE   the gatehouse resource (its /mcp URL): access tokens for it, or for
//              RESOURCE/<server>, are JWTs (RFC 9068, typ at+jwt) whose aud is that resource
//   SCOPE      the resource's scopes, space-separated (default "mcp"): what a client may ask for
//              the resource, granted on consent, carried in the token's `scope`
//   ACCOUNTS   a JSON file { "<login>": { "password": "...", "email": "...", "groups": [...] } },
//              read on every sign-in and every token: edit it to change a person's groups
//   KEYS_DIR   where the signing keys are kept (generated on first start); a second start with
//              ROTATE=1 puts a new key first (a new kid signs, the old one is still published)
//
// Dynamic client registration is open (RFC 7591), and a public client is pre-registered
// (PUBLIC_CLIENT_ID, default gatehouse-cli, redirect PUBLIC_CLIENT_REDIRECT, default
// http://127.0.0.1:33418/callback); PKCE (S256) is required. The sign-in and consent
// pages are the minimal forms below (login + password checked against ACCOUNTS, then "Allow");
// everything else (discovery, authorization, token, JWKS, registration) is oidc-provider's own.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import crypto from 'node:crypto';
import { URL } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const resource = process.env.RESOURCE;
const scope = process.env.SCOPE || 'mcp';
const accountsFile = process.env.ACCOUNTS;
const keysDir = process.env.KEYS_DIR;
if (!port || !resource || !accountsFile || !keysDir) {
  console.error('PORT, RESOURCE, ACCOUNTS and KEYS_DIR are required');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const accounts = () => JSON.parse(fs.readFileSync(accountsFile, 'utf8'));

// Signing keys: RS256 (oidc-provider's default for JWT access tokens), kept across restarts so
// that a restart with ROTATE=1 is a key rotation, not a new identity provider.
function signingKeys() {
  fs.mkdirSync(keysDir, { recursive: true });
  const file = path.join(keysDir, 'jwks.json');
  let keys = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : [];
  if (keys.length === 0 || process.env.ROTATE === '1') {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = privateKey.export({ format: 'jwk' });
    jwk.kid = `k${Date.now().toString(36)}${crypto.randomBytes(3).toString('hex')}`;
    jwk.use = 'sig';
    jwk.alg = 'RS256';
    keys = [jwk, ...keys].slice(0, 2); // the first key signs; the previous one stays published
    fs.writeFileSync(file, JSON.stringify(keys), { mode: 0o600 });
  }
  return { keys };
}

function resourceServer(indicator) {
  if (indicator !== resource && !indicator.startsWith(`${resource}/`)) {
    throw new errors.InvalidTarget('unknown resource');
  }
  return {
    scope,
    audience: indicator,
    accessTokenTTL: 5 * 60,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

// A pre-registered public client (what an enterprise IdP gives a CLI), beside open registration.
// With no `scope` of its own it may ask for any of the provider's scopes; a dynamically
// registered client may ask only for those it registered with.
const preRegistered = {
  client_id: process.env.PUBLIC_CLIENT_ID || 'gatehouse-cli',
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  redirect_uris: [process.env.PUBLIC_CLIENT_REDIRECT || 'http://127.0.0.1:33418/callback'],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
};

const configuration = {
  clients: [preRegistered],
  jwks: signingKeys(),
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  // The resource's scope is listed too: registration (RFC 7591) checks a client's `scope`
  // against these, and the SDK registers with the scope gatehouse challenges.
  scopes: ['openid', 'email', 'groups', 'offline_access', ...scope.split(' ').filter(Boolean)],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  async findAccount(_ctx, id) {
    const a = accounts()[id];
    if (!a) return undefined;
    return {
      accountId: id,
      async claims() {
        const now = accounts()[id] || {};
        return { sub: id, email: now.email, email_verified: true, groups: now.groups || [] };
      },
    };
  },
  // The person's email and current groups in every access token (read from ACCOUNTS when the
  // token is minted, so a change applies to the next token).
  async extraTokenClaims(_ctx, token) {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const a = accounts()[token.accountId];
    return a ? { email: a.email, groups: a.groups || [] } : undefined;
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, idFactory: () => `c-${crypto.randomBytes(8).toString('hex')}` },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => resourceServer(indicator),
    },
  },
  pkce: { required: () => true },
  clientDefaults: { grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], token_endpoint_auth_method: 'none' },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AccessToken: 300, AuthorizationCode: 60, Grant: 3600, Interaction: 600, Session: 3600, RefreshToken: 3600 },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 << 10) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// GET /interaction/<uid>: the sign-in form, or the consent form. POST: checks and finishes.
async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'));
  const { prompt, params, session, grantId } = details;
  if (req.method === 'GET') {
    if (prompt.name === 'login') {
      return send(res, 200, page('Sign in', `<form method="post" action="/interaction/${esc(uid)}">
<input type="hidden" name="prompt" value="login">
<label>Login <input name="login" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button></form>`));
    }
    return send(res, 200, page('Authorize', `<p>${esc(params.client_id)} asks for: ${esc(params.scope || '')} on ${esc(params.resource || resource)}</p>
<form method="post" action="/interaction/${esc(uid)}">
<input type="hidden" name="prompt" value="consent">
<button type="submit">Allow</button></form>`));
  }
  const form = await readForm(req);
  if (form.prompt === 'login' && prompt.name === 'login') {
    const a = accounts()[form.login];
    if (!a || typeof a.password !== 'string' || !crypto.timingSafeEqual(
      crypto.createHash('sha256').update(a.password).digest(),
      crypto.createHash('sha256').update(String(form.password || '')).digest(),
    )) {
      return send(res, 401, page('Sign in', `<p class="error">invalid login or password</p><form method="post" action="/interaction/${esc(uid)}">
<input type="hidden" name="prompt" value="login">
<label>Login <input name="login"></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button></form>`));
    }
    return provider.interactionFinished(req, res, { login: { accountId: form.login } }, { mergeWithLastSubmission: false });
  }
  if (form.prompt === 'consent' && prompt.name === 'consent') {
    const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
    }
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  return send(res, 400, page('Error', '<p>unexpected form</p>'));
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)$/);
  if (m && (req.method === 'GET' || req.method === 'POST')) {
    interaction(req, res, m[1]).catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
    });
    return;
  }
  callback(req, res);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer} (signing key ${configuration.jwks.keys[0].kid})`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
