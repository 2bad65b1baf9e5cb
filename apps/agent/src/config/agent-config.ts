import { readFileSync } from 'node:fs';
import os from 'node:os';
import { z } from 'zod';

const ifname = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'a Linux interface name (at most 15 characters)');

export const AgentConfigSchema = z
  .strictObject({
    /** host:port of the control plane's AgentGateway. */
    controlPlane: z.string().min(3),
    /** Admin-issued token the gateway checks on Register. */
    joinToken: z.string().min(1).max(4096).optional(),
    hostName: z
      .string()
      .regex(/^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/)
      .default(os.hostname()),
    /** host:port the HostAgent gRPC server listens on. */
    listen: z.string().min(3).default('127.0.0.1:7443'),
    /** Address the control plane should dial to reach this agent (defaults to `listen`). */
    advertise: z.string().min(3).optional(),
    /** Address other hosts' QEMU connect to for incoming live migrations. */
    migrationAddress: z.string().min(1).default('127.0.0.1'),
    runtimeDir: z.string().min(1).default('/var/lib/hangar/run'),
    /** Where the agent keeps desired state and operation results. */
    stateDir: z.string().min(1).default('/var/lib/hangar/state'),
    pools: z
      .record(
        z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,31}$/),
        z.strictObject({ path: z.string().min(1), shared: z.boolean().default(false) }),
      )
      .refine((p) => Object.keys(p).length > 0, 'at least one storage pool'),
    bridge: ifname.default('hangar0'),
    /** Network namespace the agent's QEMU processes and taps live in (multi-host tests on one machine). */
    netns: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,64}$/)
      .optional(),
    accelerator: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
    driver: z.enum(['qemu', 'fake']).default('qemu'),
    heartbeatIntervalMs: z.number().int().min(100).max(600_000).default(5_000),
    metricsIntervalMs: z.number().int().min(100).max(3_600_000).default(10_000),
    /** Bound on events + metrics batches kept while the session is down. */
    bufferLimit: z.number().int().min(1).max(1_000_000).default(10_000),
    tls: z
      .strictObject({ ca: z.string().min(1), cert: z.string().min(1), key: z.string().min(1) })
      .optional(),
    /** Plaintext gRPC: only allowed when every address is loopback. */
    insecureLoopback: z.boolean().default(false),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
  })
  .superRefine((c, ctx) => {
    if (!c.tls && !c.insecureLoopback) {
      ctx.addIssue({
        code: 'custom',
        path: ['tls'],
        message: 'TLS files are required unless insecureLoopback is set',
      });
    }
    if (c.insecureLoopback) {
      for (const key of ['controlPlane', 'listen'] as const) {
        if (!isLoopback(c[key])) {
          ctx.addIssue({
            code: 'custom',
            path: [key],
            message: 'plaintext gRPC is only allowed on loopback addresses',
          });
        }
      }
    }
  });

export type AgentConfig = z.infer<typeof AgentConfigSchema>;
export type AgentConfigInput = z.input<typeof AgentConfigSchema>;

export function isLoopback(address: string): boolean {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export class AgentConfigError extends Error {
  constructor(readonly issues: Array<{ path: string; message: string }>) {
    super(
      `invalid agent configuration: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`,
    );
    this.name = 'AgentConfigError';
  }
}

/**
 * Loads the configuration once: a JSON file (`--config FILE` or HANGAR_AGENT_CONFIG), then
 * HANGAR_AGENT_* environment variables, then `--key value` flags, each overriding the previous.
 */
export function loadAgentConfig(
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): AgentConfig {
  const flags = parseFlags(argv);
  const file = flags.config ?? env.HANGAR_AGENT_CONFIG;
  const fromFile = file ? (JSON.parse(readFileSync(String(file), 'utf8')) as Record<string, unknown>) : {};
  const fromEnv: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(env)) {
    if (!k.startsWith('HANGAR_AGENT_') || k === 'HANGAR_AGENT_CONFIG' || v === undefined) continue;
    fromEnv[camel(k.slice('HANGAR_AGENT_'.length).toLowerCase())] = coerce(v);
  }
  const { config: _ignored, ...fromFlags } = flags;
  const merged = { ...fromFile, ...fromEnv, ...fromFlags };
  const parsed = AgentConfigSchema.safeParse(merged);
  if (!parsed.success) {
    throw new AgentConfigError(
      parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
    );
  }
  return parsed.data;
}

function parseFlags(argv: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new AgentConfigError([{ path: arg, message: 'unexpected argument' }]);
    const [rawKey, inline] = arg.slice(2).split('=', 2) as [string, string | undefined];
    const key = camel(rawKey);
    const value = inline ?? (argv[i + 1] && !argv[i + 1]!.startsWith('--') ? argv[++i]! : 'true');
    out[key] = coerce(value);
  }
  return out;
}

function camel(s: string): string {
  return s.replace(/[-_]([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Flags and env values are strings: numbers, booleans and JSON objects are decoded. */
function coerce(v: string): unknown {
  if (v === 'true') return true;
  if (v === 'false') return false;
  if (/^-?\d+$/.test(v)) return Number(v);
  if (v.startsWith('{') || v.startsWith('[')) {
    try {
      return JSON.parse(v);
    } catch {
      return v;
    }
  }
  return v;
}
