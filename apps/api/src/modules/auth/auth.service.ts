import { Injectable, Logger } from '@nestjs/common';
import { type HangarConfig, InjectConfig } from '../../config/index.js';
import type { ApiKeyRole } from '../../gen/prisma/enums.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { parseApiKey, secretMatches } from './api-key-secret.js';

/** A verified, active API key. */
export interface VerifiedKey {
  readonly id: string;
  readonly prefix: string;
  readonly projectId: string;
  readonly role: ApiKeyRole;
}

interface CachedKey {
  readonly key: VerifiedKey;
  readonly secretHash: string;
  readonly expiresAt: number;
}

/** `last_used_at` is refreshed at most this often per key: a write per request would cost more than it tells. */
const TOUCH_EVERY_MS = 60_000;
const MAX_CACHED_KEYS = 10_000;

/**
 * Verifies bearer API keys: looks the key up by its prefix, checks the SHA-256 of its secret, and
 * keeps verified keys in memory for `HANGAR_AUTH_CACHE_TTL_MS` (5 s by default) so a busy client
 * costs no query per request. Revocations and deleted projects evict at once on this replica and
 * reach the others within the TTL (docs/adr/0022).
 */
@Injectable()
export class AuthService {
  private readonly logger = new Logger(AuthService.name);
  private readonly cache = new Map<string, CachedKey>();
  private readonly touched = new Map<string, number>();

  constructor(
    private readonly prisma: PrismaService,
    @InjectConfig() private readonly config: HangarConfig,
  ) {}

  /** The active key `token` names, or undefined when it is malformed, unknown, revoked or wrong. */
  async verify(token: string): Promise<VerifiedKey | undefined> {
    const parsed = parseApiKey(token);
    if (!parsed) return undefined;
    const now = Date.now();
    const cached = this.cache.get(parsed.prefix);
    if (cached && cached.expiresAt > now) {
      return secretMatches(parsed.secret, cached.secretHash) ? cached.key : undefined;
    }
    const row = await this.prisma.apiKey.findUnique({
      where: { prefix: parsed.prefix },
      select: {
        id: true,
        prefix: true,
        projectId: true,
        role: true,
        secretHash: true,
        revokedAt: true,
        lastUsedAt: true,
      },
    });
    if (!row || row.revokedAt !== null || !secretMatches(parsed.secret, row.secretHash)) {
      this.cache.delete(parsed.prefix);
      return undefined;
    }
    const key: VerifiedKey = { id: row.id, prefix: row.prefix, projectId: row.projectId, role: row.role };
    if (this.config.authCacheTtlMs > 0) {
      if (this.cache.size >= MAX_CACHED_KEYS) this.cache.clear();
      this.cache.set(row.prefix, {
        key,
        secretHash: row.secretHash,
        expiresAt: now + this.config.authCacheTtlMs,
      });
    }
    this.touch(key.id, row.lastUsedAt, now);
    return key;
  }

  /** Forgets a key at once on this replica (revoked). */
  forgetKey(prefix: string): void {
    this.cache.delete(prefix);
  }

  /** Forgets every key of a project at once on this replica (project deleted). */
  forgetProject(projectId: string): void {
    for (const [prefix, entry] of this.cache) {
      if (entry.key.projectId === projectId) this.cache.delete(prefix);
    }
  }

  private touch(keyId: string, lastUsedAt: Date | null, now: number): void {
    const last = Math.max(lastUsedAt?.getTime() ?? 0, this.touched.get(keyId) ?? 0);
    if (now - last < TOUCH_EVERY_MS) return;
    this.touched.set(keyId, now);
    if (this.touched.size > MAX_CACHED_KEYS) this.touched.clear();
    this.prisma.apiKey
      .updateMany({ where: { id: keyId }, data: { lastUsedAt: new Date(now) } })
      .catch((error: unknown) =>
        this.logger.warn(`recording the use of key ${keyId} failed: ${String(error)}`),
      );
  }
}
