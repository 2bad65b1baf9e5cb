import { createHash, randomBytes } from 'node:crypto';
import type { Db } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { JoinToken } from '../../gen/prisma/client.js';

/** Every join token starts with this (secret scanners recognise it). */
export const JOIN_TOKEN_PREFIX = 'hgj_';

/** A new join token: the secret for the agent (shown once) and its stored hash. */
export interface GeneratedJoinToken {
  readonly token: string;
  readonly tokenHash: string;
}

/** `hgj_<32 random bytes, base64url>`; only its SHA-256 is stored. */
export function generateJoinToken(): GeneratedJoinToken {
  const token = `${JOIN_TOKEN_PREFIX}${randomBytes(32).toString('base64url')}`;
  return { token, tokenHash: hashJoinToken(token) };
}

/** SHA-256 of the whole token, lowercase hex (the unique `token_hash` column). */
export function hashJoinToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/**
 * Redeems a join token for an agent's Register, in the caller's transaction (the one that creates
 * or updates the host row): one conditional UPDATE marks it used by `hostId`, so a token works
 * exactly once even when two agents present it at the same time.
 *
 * @throws DomainError UNAUTHENTICATED when the token is unknown, used, expired or revoked (one answer
 *   for all four: the caller learns nothing about which tokens exist)
 */
export async function redeemJoinToken(db: Db, token: string, hostId: string | null): Promise<JoinToken> {
  const redeemed = await db.joinToken.updateManyAndReturn({
    where: { tokenHash: hashJoinToken(token), usedAt: null, revokedAt: null, expiresAt: { gt: new Date() } },
    data: { usedAt: new Date(), hostId },
  });
  const row = redeemed[0];
  if (!row)
    throw new DomainError(
      'UNAUTHENTICATED',
      'The join token is not valid (unknown, used, expired or revoked).',
    );
  return row;
}
