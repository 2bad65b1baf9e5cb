import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { Module } from '@nestjs/common';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { eventually } from '../../../packages/vmm-core/test/support/test-host.js';
import { Public } from '../src/common/http/access.decorators.js';
import { Endpoint, Resource } from '../src/common/http/endpoint.decorator.js';
import { PrismaService } from '../src/infra/prisma/prisma.service.js';
import { startTestApp } from './support/app.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const DIST = path.join(ROOT, 'apps/api/dist');

/** A child process with its output collected line by line. */
interface Child {
  readonly process: ChildProcessWithoutNullStreams;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const children: Child[] = [];

function run(script: string, args: string[], env: Record<string, string>): Child {
  const child = spawn(process.execPath, [path.join(DIST, script), ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', ...env },
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const collect = (into: string[]) => {
    let partial = '';
    return (chunk: Buffer) => {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      into.push(...lines);
    };
  };
  child.stdout.on('data', collect(stdout));
  child.stderr.on('data', collect(stderr));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const handle = { process: child, stdout, stderr, exited };
  children.push(handle);
  return handle;
}

async function exitOf(
  child: Child,
  timeoutMs: number,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the process did not exit within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([child.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function logLines(child: Child): { msg?: string; url?: string; level?: string }[] {
  return child.stdout.flatMap((line) => {
    try {
      return [JSON.parse(line) as { msg?: string; url?: string; level?: string }];
    } catch {
      return [];
    }
  });
}

/**
 * Compiles apps/api (incrementally) so the tests run the real entry points. Type errors elsewhere
 * in the tree do not stop TypeScript from emitting; the test only needs the files it runs.
 */
async function buildApi(): Promise<void> {
  const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc');
  const started = Date.now();
  const build = spawn(process.execPath, [tsc, '-b', 'apps/api'], { cwd: ROOT });
  let output = '';
  build.stdout.on('data', (c: Buffer) => {
    output += c.toString();
  });
  const code = await new Promise<number | null>((resolve) => build.on('exit', resolve));
  for (const file of ['main.js', 'modules/projects/bootstrap-cli.js']) {
    const built = path.join(DIST, file);
    if (!existsSync(built) || (code !== 0 && statSync(built).mtimeMs < started - 600_000)) {
      throw new Error(`building apps/api failed (exit ${code}):\n${output}`);
    }
  }
}

describe('the api as a process', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    await buildApi();
    db = await createTestDatabase();
  }, 180_000);
  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.process.exitCode === null && child.process.signalCode === null) {
        child.process.kill('SIGKILL');
        await child.exited;
      }
    }
  });
  afterAll(async () => {
    await db?.drop();
  });

  const baseEnv = (): Record<string, string> => ({
    DATABASE_URL: db.url,
    REDIS_URL: 'redis://127.0.0.1:6379',
    HANGAR_HTTP_HOST: '127.0.0.1',
    HANGAR_HTTP_PORT: '0',
    HANGAR_GRPC_PORT: '0',
    HANGAR_GRPC_INSECURE: 'true',
    HANGAR_LOG_LEVEL: 'info',
  });

  it('bootstraps a cluster once: the admin key is printed by the first run only', async () => {
    const first = run(
      'modules/projects/bootstrap-cli.js',
      ['--image-name', 'hangar-tiny', '--image-pool', 'default', '--image-kernel', 'hangar-tiny/vmlinuz'],
      { DATABASE_URL: db.url },
    );
    expect((await exitOf(first, 30_000)).code).toBe(0);
    const result = JSON.parse(first.stdout.join('\n')) as Record<string, unknown>;
    expect(result).toMatchObject({
      project_created: true,
      flavors_created: ['tiny', 'small', 'medium'],
      images_created: ['hangar-tiny'],
    });
    expect(String(result.admin_key)).toMatch(/^hgr_[a-z0-9]{12}_/);
    expect(String(result.admin_key).startsWith(String(result.admin_key_prefix))).toBe(true);

    const second = run('modules/projects/bootstrap-cli.js', [], { DATABASE_URL: db.url });
    expect((await exitOf(second, 30_000)).code).toBe(0);
    expect(JSON.parse(second.stdout.join('\n'))).toMatchObject({
      project_created: false,
      admin_key: null,
      flavors_created: [],
    });

    const bad = run('modules/projects/bootstrap-cli.js', ['--image-name', 'x', '--image-pool', 'default'], {
      DATABASE_URL: db.url,
    });
    expect((await exitOf(bad, 30_000)).code).toBe(2);
    expect(bad.stderr.join('\n')).toContain('kernel_path');
  });

  it('serves HTTP, logs JSON lines and exits 0 on SIGTERM', async () => {
    const bootstrap = run('modules/projects/bootstrap-cli.js', ['--new-admin-key'], { DATABASE_URL: db.url });
    await exitOf(bootstrap, 30_000);
    const token = String((JSON.parse(bootstrap.stdout.join('\n')) as { admin_key: string }).admin_key);

    const api = run('main.js', [], { ...baseEnv(), HANGAR_ROLE: 'api' });
    const started = await eventually(() => logLines(api).find((l) => l.msg === 'hangar api started'), {
      timeoutMs: 30_000,
      what: `the api to start (stderr: ${api.stderr.join('\n')})`,
    });
    const url = String(started.url);
    const flavors = await fetch(`${url}/v1/flavors`, { headers: { authorization: `Bearer ${token}` } });
    expect(flavors.status).toBe(200);
    expect(((await flavors.json()) as { items: unknown[] }).items).toHaveLength(3);
    await eventually(() => logLines(api).find((l) => l.msg === 'request'), {
      timeoutMs: 5000,
      what: 'an access log line',
    });
    expect(api.stdout.join('\n')).not.toContain(token);

    api.process.kill('SIGTERM');
    const exit = await exitOf(api, 20_000);
    expect(exit.code).toBe(0);
    const messages = logLines(api).map((l) => l.msg);
    expect(messages).toContain('shutting down');
    expect(messages).toContain('stopped');
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it('runs the worker role without an HTTP server', async () => {
    const worker = run('main.js', [], { ...baseEnv(), HANGAR_ROLE: 'worker' });
    const started = await eventually(() => logLines(worker).find((l) => l.msg === 'hangar api started'), {
      timeoutMs: 30_000,
      what: `the worker to start (stderr: ${worker.stderr.join('\n')})`,
    });
    expect(started.url).toBeUndefined();
    worker.process.kill('SIGINT');
    expect((await exitOf(worker, 20_000)).code).toBe(0);
  });

  it('exits 2 naming every bad setting before connecting anywhere', async () => {
    const bad = run('main.js', [], {
      HANGAR_HTTP_PORT: 'eighty',
      HANGAR_ROLE: 'everything',
      REDIS_URL: 'http://x',
    });
    expect((await exitOf(bad, 20_000)).code).toBe(2);
    const stderr = bad.stderr.join('\n');
    for (const variable of ['DATABASE_URL: is required', 'REDIS_URL', 'HANGAR_HTTP_PORT', 'HANGAR_ROLE']) {
      expect(stderr).toContain(variable);
    }
  });
});

let gate: Promise<void> | undefined;
const SlowSchema = z.strictObject({ done: z.literal(true) }).meta({ id: 'TestSlow' });

@Resource({ path: 'test-slow', tag: 'Test' })
class SlowController {
  constructor(private readonly prisma: PrismaService) {}

  @Public()
  @Endpoint({
    method: 'GET',
    operationId: 'testSlow',
    summary: 'Answers when the test lets it',
    response: SlowSchema,
  })
  async slow(): Promise<z.infer<typeof SlowSchema>> {
    await gate;
    // The database must still be there for requests that were in flight when closing began.
    await this.prisma.flavor.count();
    return { done: true };
  }
}

@Module({ controllers: [SlowController] })
class SlowModule {}

describe('graceful close', () => {
  it('lets in-flight requests finish (database included), then stops accepting connections', async () => {
    const app = await startTestApp({ extraModules: [SlowModule] });
    let release: () => void = () => undefined;
    gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      const inFlight = fetch(`${app.baseUrl}/v1/test-slow`);
      // Give the request time to reach the handler before closing.
      await new Promise((resolve) => setTimeout(resolve, 200));
      const closing = app.running.close();
      await new Promise((resolve) => setTimeout(resolve, 200));
      release();
      const res = await inFlight;
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ done: true });
      await closing;
      await expect(fetch(`${app.baseUrl}/healthz`)).rejects.toThrow();
      // Closed means disconnected: a request that reconnected after the pool closed would leave a session.
      const sessions = await app.db.prisma.$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'hangar-api'`;
      expect(sessions[0]?.n).toBe(0);
    } finally {
      release();
      gate = undefined;
      await app.close();
    }
  });
});
