import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { Redis } from 'ioredis';

/** Nest injection token for {@link RedisOptions}. */
export const REDIS_OPTIONS = Symbol('REDIS_OPTIONS');

/** Where Redis is and how this deployment's keys are named. */
export interface RedisOptions {
  /** `redis://[user:pass@]host:port[/db]`. */
  readonly url: string;
  /**
   * Prefix of every key this deployment writes (BullMQ queues, metrics, notifications), so
   * several deployments or test runs can share one Redis. Letters, digits, `:`, `_`, `-`, `.`.
   */
  readonly keyPrefix: string;
}

const KEY_PREFIX_PATTERN = /^[A-Za-z0-9:_.-]{1,64}$/;

/**
 * The control plane's Redis: one command connection for short-lived data (latest metrics,
 * notifications) plus the connection options BullMQ needs for its own connections. Losing what
 * is stored here loses no state (PostgreSQL is the source of truth, ARCHITECTURE.md).
 */
@Injectable()
export class RedisService implements OnApplicationShutdown {
  /** The command connection (not for blocking commands or subscriptions: use {@link duplicate}). */
  readonly client: Redis;
  readonly url: string;
  readonly keyPrefix: string;
  private readonly extra = new Set<Redis>();

  constructor(@Inject(REDIS_OPTIONS) options: RedisOptions) {
    if (!KEY_PREFIX_PATTERN.test(options.keyPrefix)) {
      throw new Error(
        `invalid Redis key prefix ${JSON.stringify(options.keyPrefix)}: letters, digits, ":", "_", "-", "."`,
      );
    }
    this.url = options.url;
    this.keyPrefix = options.keyPrefix;
    this.client = new Redis(options.url, {
      connectionName: `${options.keyPrefix}-cmd`,
      maxRetriesPerRequest: 3,
    });
    // ioredis reconnects by itself; without a listener an outage would crash the process.
    this.client.on('error', () => undefined);
  }

  /** `<keyPrefix>:<part>:<part>…`: every key this deployment writes goes through here. */
  key(...parts: readonly string[]): string {
    return [this.keyPrefix, ...parts].join(':');
  }

  /** The prefix BullMQ puts before its queue keys (`<keyPrefix>:bull`). */
  get bullPrefix(): string {
    return this.key('bull');
  }

  /**
   * Connection options for a BullMQ Queue or Worker. Workers block on Redis, so requests must
   * retry forever (`maxRetriesPerRequest: null`, which BullMQ requires for workers).
   */
  bullConnection(): { url: string; maxRetriesPerRequest: null; connectionName: string } {
    return { url: this.url, maxRetriesPerRequest: null, connectionName: `${this.keyPrefix}-bull` };
  }

  /** A separate connection (subscriber, blocking reads), closed with this service. */
  duplicate(): Redis {
    const connection = this.client.duplicate();
    connection.on('error', () => undefined);
    this.extra.add(connection);
    return connection;
  }

  /** Closes every connection this service opened. */
  async close(): Promise<void> {
    const all = [this.client, ...this.extra];
    this.extra.clear();
    await Promise.all(all.map((c) => c.quit().catch(() => c.disconnect())));
  }

  async onApplicationShutdown(): Promise<void> {
    await this.close();
  }
}

/**
 * Deletes every key under `<keyPrefix>:` (SCAN + UNLINK, never FLUSHDB: the Redis may be
 * shared). For tests and for operators resetting one deployment's short-lived data.
 */
export async function deleteKeysWithPrefix(client: Redis, keyPrefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  // `*`, `?`, `[` are glob characters; the prefix pattern forbids them, so the match is literal.
  const match = `${keyPrefix}:*`;
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', match, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await client.unlink(...keys);
  } while (cursor !== '0');
  return deleted;
}
