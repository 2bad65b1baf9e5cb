/**
 * bench/agent sim: what simulation mode costs per simulated agent, for scale tests (issue 7).
 *
 * For each fleet size: `node apps/agent/dist/main.js --simulate N` as a child process (fake driver,
 * plaintext loopback) reporting to a minimal AgentGateway in this process. Measures the time until
 * every agent has an open Session, then over an idle window the simulator's CPU (% of one core,
 * from /proc/<pid>/stat) and RSS, the heartbeats the gateway received against the expected
 * N × window ÷ interval, and the time SIGTERM takes to stop the fleet.
 *
 * Run: `npx tsc -b bench/agent && node bench/agent/dist/sim.bench.js [--counts 100,500,1000]
 * [--heartbeat-ms 1000] [--idle-s 20]` (`--help` for all options; bench/README.md).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs, promisify } from 'node:util';
import {
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { controlv1, PROTOCOL_VERSION } from '@hangar/proto';

const execFileAsync = promisify(execFile);
const repoRoot = path.resolve(import.meta.dirname, '../../..');
const agentMainJs = path.join(repoRoot, 'apps/agent/dist/main.js');
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
const progress = (msg: string) => process.stderr.write(`[bench:agent:sim] ${msg}\n`);

const USAGE = `Usage: node bench/agent/dist/sim.bench.js [options]

  --counts LIST        fleet sizes, comma-separated (default 100,500,1000)
  --heartbeat-ms MS    heartbeat interval of every simulated agent (default 1000)
  --metrics-ms MS      metrics interval (default 5000)
  --idle-s S           idle measurement window (default 20)
  --connect-timeout-s S  how long all sessions may take to open (default 300)
  --json               JSON instead of markdown
`;

/** Counts what the fleet sends; acknowledges every report, as the api does. */
class CountingGateway {
  registers = 0;
  heartbeats = 0;
  metrics = 0;
  private readonly server = new Server();
  private readonly streams = new Set<
    ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>
  >();
  private hostIds = 0;

  async start(): Promise<string> {
    this.server.addService(controlv1.AgentGatewayService, {
      register: (
        call: ServerUnaryCall<controlv1.RegisterRequest, controlv1.RegisterResponse>,
        cb: sendUnaryData<controlv1.RegisterResponse>,
      ) => {
        this.registers++;
        cb(
          null,
          controlv1.RegisterResponse.fromPartial({
            hostId: call.request.hostId || `host-${++this.hostIds}`,
            protocolVersion: PROTOCOL_VERSION,
          }),
        );
      },
      session: (call: ServerDuplexStream<controlv1.SessionRequest, controlv1.SessionResponse>) => {
        this.streams.add(call);
        call.on('data', (req: controlv1.SessionRequest) => {
          if (req.body?.$case === 'heartbeat') this.heartbeats++;
          else if (req.body?.$case === 'metrics') this.metrics++;
          call.write({ notice: { $case: 'ack', value: { upToSequence: req.sequence } } });
        });
        const drop = () => this.streams.delete(call);
        call.on('end', () => {
          drop();
          call.end();
        });
        call.on('error', drop);
        call.on('cancelled', drop);
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

async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function rssBytes(pid: number): Promise<number> {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb ?? 0) * 1024;
}

interface FleetResult {
  agents: number;
  /** Spawn → every Session open. */
  connectS: number;
  cpuPercent: number;
  rssMiB: number;
  rssPerAgentKiB: number;
  heartbeatsReceived: number;
  heartbeatsExpected: number;
  stopS: number;
  exitCode: number | null;
}

async function runFleet(
  count: number,
  options: { heartbeatMs: number; metricsMs: number; idleS: number; connectTimeoutS: number },
  clk: number,
): Promise<FleetResult> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'hangar-bench-sim-'));
  const gateway = new CountingGateway();
  let child: ChildProcess | undefined;
  try {
    const address = await gateway.start();
    await mkdir(path.join(tmp, 'pool'));
    const configFile = path.join(tmp, 'agent.json');
    await writeFile(
      configFile,
      JSON.stringify({
        controlPlane: address,
        listen: '127.0.0.1:0',
        stateDir: path.join(tmp, 'state'),
        runtimeDir: path.join(tmp, 'run'),
        pools: {
          local: { path: path.join(tmp, 'pool') },
          shared: { path: path.join(tmp, 'pool'), shared: true },
        },
        insecureLoopback: true,
        heartbeatIntervalMs: options.heartbeatMs,
        metricsIntervalMs: options.metricsMs,
        logLevel: 'warn',
      }),
    );
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('HANGAR_AGENT_')) delete env[k];
    const t0 = performance.now();
    const proc = spawn(process.execPath, [agentMainJs, '--simulate', String(count), '--config', configFile], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child = proc;
    let stderr = '';
    proc.stderr?.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString('utf8')).slice(-4_000);
    });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + options.connectTimeoutS * 1_000;
    while (gateway.open < count) {
      if (proc.exitCode !== null) throw new Error(`the simulator exited (${proc.exitCode}): ${stderr}`);
      if (Date.now() > deadline)
        throw new Error(`only ${gateway.open}/${count} sessions after ${options.connectTimeoutS} s`);
      await sleep(100);
    }
    const connectS = (performance.now() - t0) / 1_000;
    progress(`${count} agents connected in ${connectS.toFixed(1)} s; settling`);
    await sleep(Math.max(3_000, options.heartbeatMs * 2));

    const pid = proc.pid!;
    const hb0 = gateway.heartbeats;
    const w0 = performance.now();
    const c0 = await cpuTicks(pid);
    let rss = 0;
    for (let i = 0; i < options.idleS; i++) {
      await sleep(1_000);
      rss = Math.max(rss, await rssBytes(pid));
    }
    const c1 = await cpuTicks(pid);
    const wall = (performance.now() - w0) / 1_000;
    const heartbeats = gateway.heartbeats - hb0;

    const s0 = performance.now();
    proc.kill('SIGTERM');
    const code = await within(exited, 60_000);
    if (code === 'timeout') throw new Error('the simulator did not stop within 60 s of SIGTERM');
    return {
      agents: count,
      connectS: Math.round(connectS * 10) / 10,
      cpuPercent: Math.round(((c1 - c0) / clk / wall) * 1_000) / 10,
      rssMiB: Math.round(rss / 2 ** 20),
      rssPerAgentKiB: Math.round(rss / 1024 / count),
      heartbeatsReceived: heartbeats,
      heartbeatsExpected: Math.round((count * wall * 1_000) / options.heartbeatMs),
      stopS: Math.round(((performance.now() - s0) / 1_000) * 10) / 10,
      exitCode: code,
    };
  } finally {
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null)
      child.kill('SIGKILL');
    gateway.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      counts: { type: 'string', default: '100,500,1000' },
      'heartbeat-ms': { type: 'string', default: '1000' },
      'metrics-ms': { type: 'string', default: '5000' },
      'idle-s': { type: 'string', default: '20' },
      'connect-timeout-s': { type: 'string', default: '300' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const counts = values.counts.split(',').map((c) => Number(c.trim()));
  if (counts.some((c) => !Number.isInteger(c) || c < 1)) throw new Error(`bad --counts ${values.counts}`);
  const options = {
    heartbeatMs: Number(values['heartbeat-ms']),
    metricsMs: Number(values['metrics-ms']),
    idleS: Number(values['idle-s']),
    connectTimeoutS: Number(values['connect-timeout-s']),
  };
  const clk = Number((await execFileAsync('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  const loadStart = os.loadavg().map((x) => x.toFixed(2));
  const results: FleetResult[] = [];
  for (const count of counts) {
    progress(`fleet of ${count}`);
    results.push(await runFleet(count, options, clk));
  }
  const loadEnd = os.loadavg().map((x) => x.toFixed(2));
  if (values.json) {
    process.stdout.write(
      `${JSON.stringify({ date: new Date().toISOString(), options, loadStart, loadEnd, results }, null, 2)}\n`,
    );
    return 0;
  }
  const lines = [
    `### Simulation mode — ${new Date().toISOString()}`,
    '',
    `${os.availableParallelism()} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}; heartbeat ${options.heartbeatMs} ms, metrics ${options.metricsMs} ms, idle window ${options.idleS} s. Load average at start ${loadStart.join(' ')}, at end ${loadEnd.join(' ')}.`,
    '',
    '| agents | all sessions open after | simulator CPU (% of one core) | simulator RSS | RSS per agent | heartbeats received / expected | SIGTERM → exit |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...results.map(
      (r) =>
        `| ${r.agents} | ${r.connectS} s | ${r.cpuPercent} % | ${r.rssMiB} MiB | ${r.rssPerAgentKiB} KiB | ${r.heartbeatsReceived} / ${r.heartbeatsExpected} | ${r.stopS} s (exit ${r.exitCode}) |`,
    ),
    '',
  ];
  process.stdout.write(lines.join('\n'));
  return 0;
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
