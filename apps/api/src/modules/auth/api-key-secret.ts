import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** Every API key starts with this: secret scanners (and humans) recognise a leaked key. */
export const API_KEY_PREFIX = 'hgr_';

const PREFIX_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
const PREFIX_LENGTH = 12;
const KEY_PATTERN = /^hgr_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$/;

/** A freshly generated API key: the full secret (shown once) and what is stored. */
export interface GeneratedApiKey {
  /** `hgr_<prefix>_<secret>`: give it to the user once, never store or log it. */
  readonly token: string;
  /** The public lookup part, stored in clear (unique). */
  readonly prefix: string;
  /** SHA-256 of the secret part, lowercase hex. */
  readonly secretHash: string;
}

/**
 * Generates a key `hgr_<12 lowercase alphanumerics>_<32 random bytes, base64url>`. The secret has
 * 256 bits of entropy, so a plain SHA-256 is a sufficient verifier (no password hashing needed:
 * nothing to brute-force). See docs/adr/0022.
 */
export function generateApiKey(): GeneratedApiKey {
  const prefixBytes = randomBytes(PREFIX_LENGTH);
  let prefix = '';
  for (const byte of prefixBytes) prefix += PREFIX_ALPHABET[byte % PREFIX_ALPHABET.length];
  const secret = randomBytes(32).toString('base64url');
  return { token: `${API_KEY_PREFIX}${prefix}_${secret}`, prefix, secretHash: hashSecret(secret) };
}

/** Splits a presented key into its prefix and secret; undefined when it is not shaped like one. */
export function parseApiKey(token: string): { prefix: string; secret: string } | undefined {
  const match = KEY_PATTERN.exec(token);
  if (!match?.[1] || !match[2]) return undefined;
  return { prefix: match[1], secret: match[2] };
}

/** SHA-256 of a key's secret part, lowercase hex (the `secret_hash` column). */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Whether `secret` hashes to `storedHash`, compared in constant time. */
export function secretMatches(secret: string, storedHash: string): boolean {
  const presented = Buffer.from(hashSecret(secret), 'hex');
  const stored = Buffer.from(storedHash, 'hex');
  return presented.length === stored.length && timingSafeEqual(presented, stored);
}
