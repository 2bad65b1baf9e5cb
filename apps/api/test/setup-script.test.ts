import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readdir, readFile, rm, symlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  eventually,
  killQemuUnder,
  makeOwnedTempDir,
} from '../../../packages/vmm-core/test/support/test-host.js';
import { createTestRedis, repoRoot, type TestRedis } from './support/cluster.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

/** What a script printed and how it ended. */
interface ScriptResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A process the scripts recorded in `<data>/cluster/state.json`. */
interface ProcessRecord {
  readonly pid: number;
  readonly startTime: string;
}

const scriptChildren = new Set<ChildProcess>();

/**
 * Runs `bash -c <command>` (or a script) in the repository, in its own process group so a
 * timeout can kill all of it, with only PATH/HOME of this process's environment plus `env`.
 */
function runBash(args: string[], env: Record<string, string>, timeoutMs: number): Promise<ScriptResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', args, {
      cwd: repoRoot,
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: process.env.HOME ?? '/root',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    scriptChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => {
      stdout += c.toString('utf8');
    });
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
    });
    const timer = setTimeout(() => {
      killGroup(child);
      reject(
        new Error(`bash ${args.join(' ')} did not finish within ${timeoutMs} ms:\n${stdout}\n${stderr}`),
      );
    }, timeoutMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      scriptChildren.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** The start time of a live (non-zombie) process, or undefined. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** QEMU processes whose argv mentions `root` (the guests of the cluster under test). */
async function qemuPidsUnder(root: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await readFile(`/proc/${entry}/cmdline`, 'utf8').then(
      (s) => s.split('\0'),
      () => [] as string[],
    );
    if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(root)))
      pids.push(Number(entry));
  }
  return pids;
}

const KEY = /hgr_[a-z0-9]{12}_[A-Za-z0-9_-]{43}/;

/**
 * The README's main job end to end, as a user runs it: `bash scripts/demo.sh` on a fresh data
 * folder and database brings up api + worker + agent (real QEMU under TCG), prints a URL, a key
 * and curl lines that work as pasted; a second run reuses it; `scripts/down.sh` stops it all.
 */
describe('scripts/demo.sh brings up a single-host cluster; scripts/down.sh stops it', () => {
  let dataDir: string;
  let db: TestDatabase;
  let redis: TestRedis;
  let env: Record<string, string>;
  const ports = { http: 0, grpc: 0, agent: 0 };

  const clusterDir = () => path.join(dataDir, 'cluster');
  const recorded = (): Record<string, ProcessRecord | undefined> => {
    try {
      return JSON.parse(readFileSync(path.join(clusterDir(), 'state.json'), 'utf8')).processes ?? {};
    } catch {
      return {};
    }
  };

  beforeAll(async () => {
    dataDir = await makeOwnedTempDir('setup');
    // The guest image is already built in the repository's data folder: reuse it (its build script
    // finds it up to date through the link).
    await symlink(path.join(repoRoot, '.data', 'images'), path.join(dataDir, 'images'));
    db = await createTestDatabase({ migrate: false });
    redis = await createTestRedis();
    ports.http = await freePort();
    do ports.grpc = await freePort();
    while (ports.grpc === ports.http);
    do ports.agent = await freePort();
    while (ports.agent === ports.http || ports.agent === ports.grpc);
    env = {
      HANGAR_DATA_DIR: dataDir,
      DATABASE_URL: db.url,
      REDIS_URL: redis.url,
      HANGAR_REDIS_PREFIX: redis.prefix,
    };
  });

  afterAll(async () => {
    for (const child of scriptChildren) killGroup(child);
    // Whatever the scripts started and left (a failed run): by the pids they recorded.
    for (const record of Object.values(recorded())) {
      if (record && startTimeOf(record.pid) === record.startTime) {
        try {
          process.kill(record.pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    if (dataDir) await killQemuUnder(dataDir);
    await db?.drop();
    await redis?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('prints a working URL, key and curl lines; reruns reuse it; down stops every recorded process', async () => {
    // --- first run: from nothing -------------------------------------------------------------
    const first = await runBash(
      [
        'scripts/demo.sh',
        '--http-port',
        String(ports.http),
        '--grpc-port',
        String(ports.grpc),
        '--agent-port',
        String(ports.agent),
      ],
      env,
      120_000,
    );
    expect(first.code, `${first.stdout}\n${first.stderr}`).toBe(0);
    const url = /^ {2}export HANGAR_URL=(\S+)$/m.exec(first.stdout)?.[1];
    expect(url).toBe(`http://127.0.0.1:${ports.http}`);
    const key = /^ {2}export HANGAR_API_KEY=(\S+)$/m.exec(first.stdout)?.[1] ?? '';
    expect(key).toMatch(new RegExp(`^${KEY.source}$`));
    expect(first.stdout).toContain(`Admin key: ${key}`);
    // The demo VM went through the api and booted.
    expect(first.stderr).toMatch(/demo VM [0-9a-f-]{36}: HANGAR-READY hostname=hangar-demo instance=/);
    expect(first.stderr).toContain('demo VM status: RUNNING');
    expect(first.stderr).toContain('status STOPPED');

    // The key is stored as a hash only; the scripts' own short-lived keys are all revoked.
    const keys = await db.prisma.apiKey.findMany();
    const admin = keys.find((k) => key.startsWith(`hgr_${k.prefix}_`));
    expect(admin?.role).toBe('admin');
    expect(JSON.stringify(keys)).not.toContain(key.split('_').pop());
    expect(keys.filter((k) => k.name === 'hangar-setup' && k.revokedAt === null)).toEqual([]);
    expect(await db.prisma.flavor.findMany({ select: { name: true }, orderBy: { name: 'asc' } })).toEqual([
      { name: 'medium' },
      { name: 'small' },
      { name: 'tiny' },
    ]);

    // The URL answers with the key and shows the one host, UP.
    const hostsRes = await fetch(`${url}/v1/hosts`, { headers: { authorization: `Bearer ${key}` } });
    expect(hostsRes.status).toBe(200);
    const hosts = (
      (await hostsRes.json()) as { items: { name: string; state: string; accelerator: string }[] }
    ).items;
    expect(hosts).toHaveLength(1);
    expect(hosts[0]?.state).toBe('UP');

    // The lines the summary asks to paste, pasted: create a VM and wait on its operation.
    const paste = first.stdout
      .split('\n')
      .filter((l) => /^ {2}(export HANGAR_|OP=|curl )/.test(l))
      .map((l) => l.trim());
    expect(paste).toHaveLength(4);
    const pasted = await runBash(['-e', '-c', paste.join('\n')], {}, 90_000);
    expect(pasted.code, pasted.stderr).toBe(0);
    const op = JSON.parse(pasted.stdout) as { status: string; vm_id: string; kind: string };
    expect(op).toMatchObject({ kind: 'create', status: 'SUCCEEDED' });
    const consoleText = await eventually(
      async () => {
        const res = await fetch(`${url}/v1/vms/${op.vm_id}/console`, {
          headers: { authorization: `Bearer ${key}` },
        });
        const text = ((await res.json()) as { text?: string }).text ?? '';
        return text.includes('HANGAR-READY') ? text : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 250, what: "the pasted VM's marker in its console" },
    );
    expect(consoleText).toMatch(new RegExp(`HANGAR-READY hostname=vm-\\d+ instance=${op.vm_id}`));

    // --- second run: reuses what runs (or restarts what a rebuild changed), never prints the key
    const before = recorded();
    const second = await runBash(['scripts/demo.sh', '--no-demo'], env, 90_000);
    expect(second.code, `${second.stdout}\n${second.stderr}`).toBe(0);
    expect(second.stdout).not.toMatch(KEY);
    expect(second.stdout).toContain('Admin key: one exists');
    expect(second.stdout).toContain(`export HANGAR_URL=${url}`);
    const after = recorded();
    for (const role of ['api', 'worker', 'agent']) {
      const old = before[role];
      const now = after[role];
      expect(old && now, role).toBeTruthy();
      if (second.stderr.includes(`reusing the running ${role} (pid ${old?.pid})`)) {
        expect(now?.pid).toBe(old?.pid);
      } else {
        // Restarted (its build changed meanwhile): cleanly, the old process is gone.
        expect(second.stderr).toContain(`restarting ${role} (pid ${old?.pid})`);
        expect(startTimeOf(old?.pid ?? 0)).not.toBe(old?.startTime);
      }
      expect(startTimeOf(now?.pid ?? 0)).toBe(now?.startTime);
      expect(readFileSync(path.join(clusterDir(), `${role}.pid`), 'utf8').trim()).toBe(String(now?.pid));
    }
    const guests = await qemuPidsUnder(dataDir);
    expect(guests).toHaveLength(1); // the pasted VM; the demo VM was deleted

    // --- down: guests stopped through the api, then every recorded process ---------------------
    const down = await runBash(['scripts/down.sh'], { HANGAR_DATA_DIR: dataDir }, 90_000);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toMatch(/stopping 1 guest\(s\) of host .* through the api: vm-\d+/);
    for (const [role, record] of Object.entries(after)) {
      expect(startTimeOf(record?.pid ?? 0), `${role} pid ${record?.pid}`).toBeUndefined();
      expect(existsSync(path.join(clusterDir(), `${role}.pid`))).toBe(false);
    }
    for (const pid of guests) expect(startTimeOf(pid), `QEMU pid ${pid}`).toBeUndefined();
    expect(await qemuPidsUnder(dataDir)).toEqual([]);
    const vm = await db.prisma.vm.findUniqueOrThrow({ where: { id: op.vm_id } });
    expect(vm.observedState).toBe('STOPPED');
  }, 240_000);
});
