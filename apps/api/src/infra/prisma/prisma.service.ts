import { Inject, Injectable, type OnModuleDestroy, type OnModuleInit, Optional } from '@nestjs/common';
import { PrismaPg } from '@prisma/adapter-pg';
import pg from 'pg';
import { PrismaClient } from '../../gen/prisma/client.js';

/** Nest injection token for {@link PrismaServiceOptions}; without it the service reads DATABASE_URL. */
export const PRISMA_OPTIONS = Symbol('PRISMA_OPTIONS');

/** How the service connects. */
export interface PrismaServiceOptions {
  /** PostgreSQL connection URL. */
  readonly url: string;
  /** Pool size of the pg driver (default 10). */
  readonly poolMax?: number;
  /** `application_name` shown in pg_stat_activity (default `hangar-api`). */
  readonly applicationName?: string;
}

/**
 * The Prisma client of the control plane, engine-free: queries run through `@prisma/adapter-pg`
 * on a node-postgres pool. A Nest provider (connects on module init, disconnects on destroy) that
 * also works on its own: `new PrismaService('postgresql://…')`, then `$disconnect()` when done.
 */
@Injectable()
export class PrismaService extends PrismaClient implements OnModuleInit, OnModuleDestroy {
  /** The URL this service connects to (for logs and for tools that need their own connection). */
  readonly databaseUrl: string;
  /**
   * The node-postgres pool Prisma's adapter runs on, for the few hot read paths where Prisma's
   * per-value result mapping costs more than the query (the VM list: BENCHMARKS.md "API"). Writes
   * always go through Prisma. Ended by `$disconnect()`.
   */
  readonly pool: pg.Pool;

  constructor(@Optional() @Inject(PRISMA_OPTIONS) options?: PrismaServiceOptions | string) {
    const resolved = resolveOptions(options);
    const pool = new pg.Pool({
      connectionString: resolved.url,
      max: resolved.poolMax ?? 10,
      application_name: resolved.applicationName ?? 'hangar-api',
    });
    super({ adapter: new PrismaPg(pool, { disposeExternalPool: true }) });
    this.pool = pool;
    this.databaseUrl = resolved.url;
  }

  async onModuleInit(): Promise<void> {
    await this.$connect();
  }

  async onModuleDestroy(): Promise<void> {
    await this.$disconnect();
  }
}

function resolveOptions(options: PrismaServiceOptions | string | undefined): PrismaServiceOptions {
  if (typeof options === 'string') return { url: options };
  if (options) return options;
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('PrismaService needs a database URL: pass one or set DATABASE_URL');
  return { url };
}
