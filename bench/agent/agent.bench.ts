/**
 * bench/agent: what the per-host agent costs on a hypervisor host, and what it adds to a call.
 *
 * 1. Footprint: `hangar-agent` (`node apps/agent/dist/main.js`, QEMU driver, TCG, plaintext on
 *    loopback) runs as a child process, reporting to an AgentGateway in this process (Register,
 *    Session with acks, production intervals: heartbeat 5 s, metrics 10 s). Idle with 0 guests,
 *    then with N idle real guests (the test image, created and started over gRPC), the bench
 *    samples the agent's `/proc/<pid>/stat` utime+stime over a window (→ % of one core) and its
 *    VmRSS every second.
 * 2. GetVm round trip: sequential calls from this process to the agent (a running guest) and to a
 *    baseline — a bare grpc-js server in its own process answering the very same GetVmResponse
 *    from memory — interleaved in blocks so machine noise hits both alike. The ratio is the
 *    agent's own overhead (validation, runtime, driver).
 *
 * Targets (issue 3): agent RSS ≤ 80 MB and idle CPU ≤ 1 % of a core, with 0 and with 10 guests.
 * GetVm has no target: p50/p99 and the ratio are reported.
 *
 * Every QEMU it starts is killed by pid (and by a scan of /proc for its temp folder), the agent and
 * the baseline are stopped, and the temp folder removed: at the end, on failure and on
 * SIGINT/SIGTERM.
 *
 * Run: `npm run bench:agent -- [--guests 10] [--idle-s 30] [--calls 2000] [--json]` (bench/README.md).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import {
  type CallOptions,
  type Client,
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServiceError,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { vmSpecToProto } from '@hangar/agent';
import { agentv1, controlv1, PROTOCOL_VERSION } from '@hangar/proto';
import { parseVmSpec, type VmSpecInput } from '@hangar/vmm-core';

const execFileAsync = promisify(execFile);
const repoRoot = path.resolve(import.meta.dirname, '../../..');
const agentMainJs = path.join(repoRoot, 'apps/agent/dist/main.js');
const baselineJs = path.join(import.meta.dirname, 'baseline-server.js');
const imageDir = path.join(
  process.env.HANGAR_DATA_DIR ?? path.join(repoRoot, '.data'),
  'images',
  'hangar-tiny',
);

/** Targets of issue 3. MB = 10^6 bytes. */
const RSS_TARGET_BYTES = 80e6;
const CPU_TARGET_PERCENT = 1;
const BOOT_TIMEOUT_MS = 180_000;
const MARKER = 'HANGAR-READY';

// ---- options -----------------------------------------------------------------------------------

interface Options {
  guests: number;
  memoryMiB: number;
  idleS: number;
  settleS: number;
  calls: number;
  warmupCalls: number;
  block: number;
  bootConcurrency: number;
  json: boolean;
}

const USAGE = `Usage: node bench/agent/dist/agent.bench.js [options]

  --guests N           idle real guests in the second phase (default 10)
  --memory MIB         memory per guest (default 256)
  --idle-s S           length of each idle measurement window (default 30)
  --settle-s S         wait before each window, after start-up or the last boot (default 10)
  --calls N            GetVm calls to each of agent and baseline (default 2000)
  --warmup-calls N     untimed calls to each first (default 200)
  --block N            calls per interleaved block (default 100)
  --boot-concurrency N guests booting at the same time (default 2)
  --json               print the whole report as JSON instead of markdown
`;

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      guests: { type: 'string', default: '10' },
      memory: { type: 'string', default: '256' },
      'idle-s': { type: 'string', default: '30' },
      'settle-s': { type: 'string', default: '10' },
      calls: { type: 'string', default: '2000' },
      'warmup-calls': { type: 'string', default: '200' },
      block: { type: 'string', default: '100' },
      'boot-concurrency': { type: 'string', default: '2' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return undefined;
  const int = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  return {
    guests: int('guests', values.guests, 1),
    memoryMiB: int('memory', values.memory, 64),
    idleS: int('idle-s', values['idle-s'], 1),
    settleS: int('settle-s', values['settle-s'], 0),
    calls: int('calls', values.calls, 10),
    warmupCalls: int('warmup-calls', values['warmup-calls'], 0),
    block: int('block', values.block, 1),
    bootConcurrency: int('boot-concurrency', values['boot-concurrency'], 1),
    json: values.json,
  };
}

// ---- small helpers -----------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** `promise`, or 'timeout' after `ms`; the timer is cleared either way (no idle wait at exit). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
const progress = (msg: string) => process.stderr.write(`[bench:agent] ${msg}\n`);
const r2 = (x: number) => Math.round(x * 100) / 100;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

type UnaryFn<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (err: ServiceError | null, response: Res) => void,
) => unknown;

function rpc<Req, Res>(
  client: Client,
  method: UnaryFn<Req, Res>,
  request: Req,
  timeoutMs = 60_000,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

// ---- /proc sampling ----------------------------------------------------------------------------

let clockTicks = 100;

/** utime + stime of the whole process (all threads), in clock ticks. */
async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after "(comm) ": state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

/** Sum of utime+stime of `pids`, skipping processes that are gone. */
async function sumTicks(pids: number[]): Promise<number> {
  let total = 0;
  for (const pid of pids) total += await cpuTicks(pid).catch(() => 0);
  return total;
}

// ---- the gateway the agent reports to ----------------------------------------------------------

/** A minimal AgentGateway: accepts the Register, acknowledges every report and counts them. */
class BenchGateway {
  heartbeats = 0;
  metrics = 0;
  events = 0;
  sessions = 0;
  private readonly server = new Server();
  private readonly streams = new Set<
    ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>
  >();

  async start(): Promise<string> {
    this.server.addService(controlv1.AgentGatewayService, {
      register: (
        _call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>,
        cb: sendUnaryData<controlv1.RegisterResponse>,
      ) =>
        cb(
          null,
          controlv1.RegisterResponse.fromPartial({ hostId: 'bench-host', protocolVersion: PROTOCOL_VERSION }),
        ),
      session: (call: ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>) => {
        this.sessions++;
        this.streams.add(call);
        call.on('data', (req: controlv1.SessionRequest) => {
          const kind = req.body?.$case;
          if (kind === 'heartbeat') this.heartbeats++;
          else if (kind === 'metrics') this.metrics++;
          else if (kind === 'vmEvent') this.events++;
          call.write({ notice: { $case: 'ack', value: { upToSequence: req.sequence } } });
        });
        call.on('end', () => {
          this.streams.delete(call);
          call.end();
        });
        call.on('error', () => this.streams.delete(call));
        call.on('cancelled', () => this.streams.delete(call));
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    return `127.0.0.1:${port}`;
  }

  get open(): number {
    return this.streams.size;
  }

  close(): void {
    this.server.forceShutdown();
    this.streams.clear();
  }
}

// ---- child processes ---------------------------------------------------------------------------

/** A node child whose stdout lines are kept (the agent's JSON log, the baseline's address). */
class NodeChild {
  readonly lines: string[] = [];
  stderr = '';
  readonly exited: Promise<void>;

  constructor(readonly child: ChildProcess) {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const parts = buffered.split('\n');
      buffered = parts.pop() ?? '';
      for (const line of parts) if (line.trim()) this.lines.push(line);
      // Keep memory flat over a long run: only the start-up lines matter.
      if (this.lines.length > 2_000) this.lines.splice(200, this.lines.length - 1_000);
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString('utf8')).slice(-8_000);
    });
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  static spawn(args: string[]): NodeChild {
    const env = { ...process.env };
    // The agent reads HANGAR_AGENT_* as configuration: it gets only its config file.
    for (const k of Object.keys(env)) if (k.startsWith('HANGAR_AGENT_')) delete env[k];
    return new NodeChild(
      spawn(process.execPath, args, { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] }),
    );
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('child has no pid');
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async waitForLine(match: (line: string) => boolean, what: string, timeoutMs = 30_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find(match);
      if (hit) return hit;
      if (!this.running) throw new Error(`${what}: the process exited; stderr: ${this.stderr}`);
      if (Date.now() > deadline)
        throw new Error(`${what}: not within ${timeoutMs} ms; stderr: ${this.stderr}`);
      await sleep(50);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const gone = await within(this.exited, graceMs);
    if (gone === 'timeout' && this.running) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

/** Pids of QEMU processes whose argv names `dir` (only what this bench started). */
async function qemuPidsUnder(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
      if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(dir)))
        pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// ---- the measurements --------------------------------------------------------------------------

interface IdleWindow {
  guests: number;
  seconds: number;
  /** Agent CPU over the window, % of one core. */
  cpuPercent: number;
  rssMedianBytes: number;
  rssMaxBytes: number;
  /** All guests' QEMU processes together over the same window, % of one core (context only). */
  guestsCpuPercent: number | undefined;
  heartbeats: number;
  metricsBatches: number;
}

async function idleWindow(
  agentPid: number,
  seconds: number,
  guestPids: number[],
  gateway: BenchGateway,
): Promise<IdleWindow> {
  const hb0 = gateway.heartbeats;
  const m0 = gateway.metrics;
  const t0 = performance.now();
  const c0 = await cpuTicks(agentPid);
  const q0 = await sumTicks(guestPids);
  const rss: number[] = [];
  for (let i = 0; i < seconds; i++) {
    await sleep(1_000);
    rss.push(await rssBytes(agentPid));
  }
  const c1 = await cpuTicks(agentPid);
  const q1 = await sumTicks(guestPids);
  const wall = (performance.now() - t0) / 1_000;
  rss.sort((a, b) => a - b);
  return {
    guests: guestPids.length,
    seconds: r2(wall),
    cpuPercent: r3(((c1 - c0) / clockTicks / wall) * 100),
    rssMedianBytes: percentile(rss, 50),
    rssMaxBytes: rss.at(-1) ?? 0,
    guestsCpuPercent: guestPids.length > 0 ? r2(((q1 - q0) / clockTicks / wall) * 100) : undefined,
    heartbeats: gateway.heartbeats - hb0,
    metricsBatches: gateway.metrics - m0,
  };
}

interface LatencyStats {
  calls: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  meanMs: number;
}

function latencyStats(samples: number[]): LatencyStats {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    calls: sorted.length,
    p50Ms: r3(percentile(sorted, 50)),
    p90Ms: r3(percentile(sorted, 90)),
    p99Ms: r3(percentile(sorted, 99)),
    meanMs: r3(sorted.reduce((s, x) => s + x, 0) / Math.max(1, sorted.length)),
  };
}

async function timeGetVm(
  client: agentv1.HostAgentClient,
  vmId: string,
  n: number,
  out: number[],
): Promise<void> {
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await rpc(client, client.getVm, { vmId }, 10_000);
    out.push(performance.now() - t);
  }
}

function guestSpec(
  i: number,
  memoryMiB: number,
  image: { kernel: string; initrd: string; cmdline: string; baseDisk: string },
): VmSpecInput {
  const id = `bench${i}`;
  return {
    id,
    name: `vm-${id}`,
    vcpus: 1,
    memoryMiB,
    machineType: 'pc',
    cpuModel: 'qemu64',
    boot: {
      type: 'kernel',
      kernel: { pool: 'images', path: image.kernel },
      initrd: { pool: 'images', path: image.initrd },
      cmdline: image.cmdline,
    },
    disks: [
      {
        name: 'data',
        file: { pool: 'local', path: `${id}/data.qcow2` },
        backing: { pool: 'images', path: image.baseDisk, format: 'qcow2' },
        cache: 'none',
      },
    ],
    nics: [],
    cloudInit: { hostname: id },
  };
}

/** Creates, starts and waits for the marker of one guest over gRPC; returns its QEMU pid. */
async function bootGuest(client: agentv1.HostAgentClient, spec: VmSpecInput): Promise<number> {
  await rpc(client, client.createVm, {
    operationId: `create-${spec.id}`,
    spec: vmSpecToProto(parseVmSpec(spec)),
  });
  const started = await rpc(client, client.startVm, { operationId: `start-${spec.id}`, vmId: spec.id });
  const pid = started.vm?.pid;
  if (!pid) throw new Error(`${spec.id} started without a pid`);
  const deadline = Date.now() + BOOT_TIMEOUT_MS;
  for (;;) {
    const log = await rpc(client, client.consoleLog, { vmId: spec.id, tailBytes: 64 * 1024 });
    if (log.text.includes(MARKER)) return pid;
    if (Date.now() > deadline) throw new Error(`${spec.id}: no ${MARKER} within ${BOOT_TIMEOUT_MS} ms`);
    await sleep(250);
  }
}

// ---- report ------------------------------------------------------------------------------------

interface Report {
  date: string;
  command: string;
  machine: { cores: number; memoryGiB: number; os: string; kernel: string; node: string; qemu: string };
  loadavgStart: number[];
  loadavgEnd: number[];
  options: Options;
  idle: IdleWindow[];
  latency: {
    vmId: string;
    agent: LatencyStats;
    baseline: LatencyStats;
    ratio: { p50: number; p90: number; p99: number };
  };
  targets: { rssBytes: number; cpuPercent: number };
  verdict: { rss: boolean; cpu: boolean; pass: boolean };
}

const mb = (b: number) => `${(b / 1e6).toFixed(1)} MB (${(b / 2 ** 20).toFixed(1)} MiB)`;
const mark = (ok: boolean) => (ok ? 'PASS' : 'FAIL');

function markdown(r: Report): string {
  const [idle0, idleN] = r.idle as [IdleWindow, IdleWindow];
  const rssOk = (w: IdleWindow) => w.rssMaxBytes <= r.targets.rssBytes;
  const cpuOk = (w: IdleWindow) => w.cpuPercent <= r.targets.cpuPercent;
  const l = r.latency;
  return [
    `### Agent footprint and GetVm latency — ${r.date}`,
    '',
    `Machine: ${r.machine.cores} cores, ${r.machine.memoryGiB} GiB, ${r.machine.os}, kernel ${r.machine.kernel}, Node ${r.machine.node}, ${r.machine.qemu} (TCG).`,
    `Load average at start ${r.loadavgStart.join(' ')}, at end ${r.loadavgEnd.join(' ')}.`,
    `Command: \`${r.command}\``,
    '',
    `| agent process (\`node apps/agent/dist/main.js\`) | 0 guests | ${idleN.guests} idle guests | target | result |`,
    '| --- | --- | --- | --- | --- |',
    `| RSS, median of ${idle0.seconds.toFixed(0)} 1-s samples | ${mb(idle0.rssMedianBytes)} | ${mb(idleN.rssMedianBytes)} | | |`,
    `| RSS, max | ${mb(idle0.rssMaxBytes)} | ${mb(idleN.rssMaxBytes)} | ≤ 80 MB | ${mark(rssOk(idle0))} / ${mark(rssOk(idleN))} |`,
    `| CPU, utime+stime over the window, % of one core | ${idle0.cpuPercent.toFixed(3)} % | ${idleN.cpuPercent.toFixed(3)} % | ≤ 1 % | ${mark(cpuOk(idle0))} / ${mark(cpuOk(idleN))} |`,
    `| reports the gateway got in the window (heartbeats / metrics batches) | ${idle0.heartbeats} / ${idle0.metricsBatches} | ${idleN.heartbeats} / ${idleN.metricsBatches} | | |`,
    `| all guests' QEMU CPU, % of one core (context) | — | ${idleN.guestsCpuPercent?.toFixed(1) ?? '—'} % | | |`,
    '',
    `GetVm round trip over loopback (VM \`${l.vmId}\`, running), ${l.agent.calls} sequential calls to each, interleaved in blocks of ${r.options.block} after ${r.options.warmupCalls} warm-up calls each:`,
    '',
    '| server | p50 | p90 | p99 | mean |',
    '| --- | --- | --- | --- | --- |',
    `| agent (QEMU driver) | ${l.agent.p50Ms.toFixed(3)} ms | ${l.agent.p90Ms.toFixed(3)} ms | ${l.agent.p99Ms.toFixed(3)} ms | ${l.agent.meanMs.toFixed(3)} ms |`,
    `| baseline: bare grpc-js, same response from memory | ${l.baseline.p50Ms.toFixed(3)} ms | ${l.baseline.p90Ms.toFixed(3)} ms | ${l.baseline.p99Ms.toFixed(3)} ms | ${l.baseline.meanMs.toFixed(3)} ms |`,
    `| ratio agent ÷ baseline | ${l.ratio.p50.toFixed(2)}× | ${l.ratio.p90.toFixed(2)}× | ${l.ratio.p99.toFixed(2)}× | |`,
    '',
    `Overall (RSS ≤ 80 MB and idle CPU ≤ 1 % of a core, with 0 and ${idleN.guests} guests): **${mark(r.verdict.pass)}**`,
    '',
  ].join('\n');
}

async function machine(): Promise<Report['machine']> {
  const first = async (cmd: string, args: string[]) =>
    (
      await execFileAsync(cmd, args).then(
        (r) => r.stdout,
        () => '',
      )
    )
      .split('\n')[0]
      ?.trim() ?? '';
  const osRelease = await readFile('/etc/os-release', 'utf8').catch(() => '');
  return {
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    os: /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(osRelease)?.[1] ?? os.type(),
    kernel: os.release(),
    node: process.version,
    qemu: (await first('qemu-system-x86_64', ['--version'])).replace(/^QEMU emulator version /, 'QEMU '),
  };
}

// ---- main --------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) {
    process.stdout.write(USAGE);
    return 0;
  }
  clockTicks = Number((await execFileAsync('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  const image = JSON.parse(await readFile(path.join(imageDir, 'image.json'), 'utf8')) as {
    kernel: string;
    initrd: string;
    cmdline: string;
    baseDisk: string;
  };
  const loadavgStart = os.loadavg().map(r2);
  progress(`load average ${loadavgStart.join(' ')}; ${options.guests} guests, ${options.idleS} s windows`);

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'hangar-bench-agent-'));
  const gateway = new BenchGateway();
  let agent: NodeChild | undefined;
  let baseline: NodeChild | undefined;
  const guestPids: number[] = [];
  const clients: Client[] = [];

  let cleaned: Promise<void> | undefined;
  const cleanup = () => {
    cleaned ??= (async () => {
      for (const c of clients) c.close();
      await agent?.stop().catch(() => undefined);
      await baseline?.stop().catch(() => undefined);
      gateway.close();
      // The agent leaves guests running by design: they are killed here, by pid.
      const pids = new Set([...guestPids, ...(await qemuPidsUnder(tmp))]);
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      const deadline = Date.now() + 10_000;
      while ([...pids].some(isAlive) && Date.now() < deadline) await sleep(100);
      await rm(tmp, { recursive: true, force: true });
    })();
    return cleaned;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    progress(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const gatewayAddress = await gateway.start();
    await mkdir(path.join(tmp, 'local'));
    const configFile = path.join(tmp, 'agent.json');
    await writeFile(
      configFile,
      JSON.stringify({
        controlPlane: gatewayAddress,
        hostName: 'bench-host',
        listen: '127.0.0.1:0',
        runtimeDir: path.join(tmp, 'run'),
        stateDir: path.join(tmp, 'state'),
        pools: { images: { path: imageDir, shared: true }, local: { path: path.join(tmp, 'local') } },
        driver: 'qemu',
        accelerator: 'tcg',
        insecureLoopback: true,
        logLevel: 'info',
      }),
    );
    agent = NodeChild.spawn([agentMainJs, '--config', configFile]);
    const listening = await agent.waitForLine((l) => l.includes('"agent listening"'), 'agent listening');
    const agentAddress = (JSON.parse(listening) as { address: string }).address;
    const deadline = Date.now() + 15_000;
    while (gateway.open < 1) {
      if (Date.now() > deadline) throw new Error('the agent opened no Session to the gateway');
      await sleep(50);
    }
    progress(`agent pid ${agent.pid} on ${agentAddress}, session open`);

    const idle: IdleWindow[] = [];
    await sleep(options.settleS * 1_000);
    progress(`measuring idle with 0 guests for ${options.idleS} s`);
    idle.push(await idleWindow(agent.pid, options.idleS, [], gateway));

    const client = new agentv1.HostAgentClient(agentAddress, credentials.createInsecure());
    clients.push(client);
    progress(
      `booting ${options.guests} guests (${options.memoryMiB} MiB, ${options.bootConcurrency} at a time)`,
    );
    for (let i = 0; i < options.guests; i += options.bootConcurrency) {
      const batch = Array.from(
        { length: Math.min(options.bootConcurrency, options.guests - i) },
        (_, k) => i + k,
      );
      const pids = await Promise.all(
        batch.map(async (n) => {
          const pid = await bootGuest(client, guestSpec(n, options.memoryMiB, image));
          guestPids.push(pid);
          return pid;
        }),
      );
      progress(`guests ${batch.join(', ')} up (pids ${pids.join(', ')})`);
    }
    await sleep(options.settleS * 1_000);
    progress(`measuring idle with ${options.guests} guests for ${options.idleS} s`);
    idle.push(await idleWindow(agent.pid, options.idleS, guestPids, gateway));

    // GetVm: the agent's real answer becomes the baseline's canned one.
    const vmId = 'bench0';
    const answer = await rpc(client, client.getVm, { vmId });
    const responseFile = path.join(tmp, 'getvm-response.bin');
    await writeFile(responseFile, agentv1.GetVmResponse.encode(answer).finish());
    baseline = NodeChild.spawn([baselineJs, responseFile]);
    const baselineLine = await baseline.waitForLine((l) => l.startsWith('listening '), 'baseline listening');
    const baselineClient = new agentv1.HostAgentClient(
      baselineLine.slice('listening '.length),
      credentials.createInsecure(),
    );
    clients.push(baselineClient);
    const check = await rpc(baselineClient, baselineClient.getVm, { vmId });
    if (check.vm?.id !== vmId || check.vm.state !== answer.vm?.state)
      throw new Error('the baseline answers differently');

    progress(`GetVm: ${options.warmupCalls} warm-up + ${options.calls} timed calls to each`);
    const scratch: number[] = [];
    await timeGetVm(client, vmId, options.warmupCalls, scratch);
    await timeGetVm(baselineClient, vmId, options.warmupCalls, scratch);
    const agentMs: number[] = [];
    const baseMs: number[] = [];
    for (let round = 0; agentMs.length < options.calls; round++) {
      const n = Math.min(options.block, options.calls - agentMs.length);
      // A, B then B, A: neither side always runs first after a pause.
      if (round % 2 === 0) {
        await timeGetVm(client, vmId, n, agentMs);
        await timeGetVm(baselineClient, vmId, n, baseMs);
      } else {
        await timeGetVm(baselineClient, vmId, n, baseMs);
        await timeGetVm(client, vmId, n, agentMs);
      }
    }
    const a = latencyStats(agentMs);
    const b = latencyStats(baseMs);

    const rssPass = idle.every((w) => w.rssMaxBytes <= RSS_TARGET_BYTES);
    const cpuPass = idle.every((w) => w.cpuPercent <= CPU_TARGET_PERCENT);
    const report: Report = {
      date: new Date().toISOString(),
      command: ['npm run bench:agent --', ...process.argv.slice(2)].join(' ').replace(/ --$/, ''),
      machine: await machine(),
      loadavgStart,
      loadavgEnd: os.loadavg().map(r2),
      options,
      idle,
      latency: {
        vmId,
        agent: a,
        baseline: b,
        ratio: { p50: r2(a.p50Ms / b.p50Ms), p90: r2(a.p90Ms / b.p90Ms), p99: r2(a.p99Ms / b.p99Ms) },
      },
      targets: { rssBytes: RSS_TARGET_BYTES, cpuPercent: CPU_TARGET_PERCENT },
      verdict: { rss: rssPass, cpu: cpuPass, pass: rssPass && cpuPass },
    };
    process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : markdown(report));
    return 0;
  } catch (err) {
    progress(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    if (agent) progress(`agent stderr: ${agent.stderr.slice(-2_000)}`);
    return 1;
  } finally {
    await cleanup();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    progress(`failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
