import { z } from 'zod';

/** What a process runs: the HTTP api (+ AgentGateway), the conductor workers, or both. */
export const HANGAR_ROLES = ['api', 'worker', 'all'] as const;
export type HangarRole = (typeof HANGAR_ROLES)[number];

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const port = z.coerce.number().int().min(0).max(65_535);
const positiveInt = (max: number) => z.coerce.number().int().min(1).max(max);
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const url = (protocols: readonly string[]) =>
  z
    .string()
    .min(1)
    .refine(
      (value) => {
        try {
          return protocols.includes(new URL(value).protocol);
        } catch {
          return false;
        }
      },
      `a ${protocols.map((p) => `${p}//`).join(' or ')} URL`,
    );

/**
 * The environment the control plane reads, validated once at start (immich-style). Every key is
 * documented in apps/api/README.md. Other variables are ignored: scripts and tests of the
 * repository share the HANGAR_ prefix.
 */
export const HangarEnvSchema = z.object({
  DATABASE_URL: url(['postgresql:', 'postgres:']),
  REDIS_URL: url(['redis:', 'rediss:']),
  HANGAR_ROLE: z.enum(HANGAR_ROLES).default('all'),
  HANGAR_HTTP_HOST: z.string().min(1).default('127.0.0.1'),
  HANGAR_HTTP_PORT: port.default(8080),
  HANGAR_GRPC_HOST: z.string().min(1).default('127.0.0.1'),
  HANGAR_GRPC_PORT: port.default(7440),
  /** PEM files of the AgentGateway's mTLS identity; all three or none. */
  HANGAR_GRPC_TLS_CA: z.string().min(1).optional(),
  HANGAR_GRPC_TLS_CERT: z.string().min(1).optional(),
  HANGAR_GRPC_TLS_KEY: z.string().min(1).optional(),
  /** Plaintext gRPC to and from agents; only on a loopback HANGAR_GRPC_HOST (set-ups on one machine, tests). */
  HANGAR_GRPC_INSECURE: bool.default(false),
  HANGAR_LOG_LEVEL: z.enum(LOG_LEVELS).default('info'),
  /** One log line per HTTP request (method, path, status, duration). */
  HANGAR_HTTP_ACCESS_LOG: bool.default(true),
  HANGAR_HTTP_BODY_LIMIT_BYTES: positiveInt(64 * 1024 * 1024).default(1024 * 1024),
  /** `X-Forwarded-*` is trusted only when the api runs behind a proxy the operator names. */
  HANGAR_HTTP_TRUST_PROXY: bool.default(false),
  HANGAR_DATABASE_POOL_MAX: positiveInt(1000).default(10),
  /** BullMQ key prefix, so several clusters (or test runs) can share one Redis. */
  HANGAR_REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9:_-]{1,64}$/)
    .default('hangar'),
  /** How long a verified API key is trusted without reading the database again (0: never). */
  HANGAR_AUTH_CACHE_TTL_MS: z.coerce.number().int().min(0).max(300_000).default(5_000),
  /** How long an Idempotency-Key is remembered. */
  HANGAR_IDEMPOTENCY_TTL_HOURS: positiveInt(24 * 30).default(24),
  /** How long `close()` waits for in-flight requests and workers before the process exits anyway. */
  HANGAR_SHUTDOWN_TIMEOUT_MS: positiveInt(600_000).default(15_000),
});

/** The validated configuration every part of the api reads (never `process.env`). */
export interface HangarConfig {
  readonly role: HangarRole;
  readonly databaseUrl: string;
  readonly databasePoolMax: number;
  readonly redisUrl: string;
  readonly redisPrefix: string;
  readonly http: {
    readonly host: string;
    readonly port: number;
    readonly bodyLimitBytes: number;
    readonly trustProxy: boolean;
    readonly accessLog: boolean;
  };
  readonly grpc: {
    readonly host: string;
    readonly port: number;
    /** Absent when `insecure` is set. */
    readonly tls?: { readonly ca: string; readonly cert: string; readonly key: string } | undefined;
    readonly insecure: boolean;
  };
  readonly logLevel: (typeof LOG_LEVELS)[number];
  readonly authCacheTtlMs: number;
  readonly idempotencyTtlMs: number;
  readonly shutdownTimeoutMs: number;
}

/** The configuration is invalid; `issues` names every offending variable at once. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly issues: readonly { readonly variable: string; readonly message: string }[]) {
    super(`invalid configuration: ${issues.map((i) => `${i.variable}: ${i.message}`).join('; ')}`);
  }
}

/**
 * Reads and validates the configuration from `env` (default `process.env`), once.
 * Empty strings count as unset, so `FOO=` in an env file falls back to the default.
 *
 * @throws ConfigError listing every invalid or missing variable
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>> = process.env): HangarConfig {
  const known = new Set(Object.keys(HangarEnvSchema.shape));
  const input: Record<string, string> = {};
  const issues: { variable: string; message: string }[] = [];
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined || value === '') continue;
    if (known.has(key)) input[key] = value;
  }
  const parsed = HangarEnvSchema.safeParse(input);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const variable = String(issue.path[0] ?? '(env)');
      const missing = issue.code === 'invalid_type' && input[variable] === undefined;
      issues.push({ variable, message: missing ? 'is required' : issue.message });
    }
  }
  if (issues.length > 0 || !parsed.success) throw new ConfigError(issues);
  const e = parsed.data;
  const tlsFiles = [e.HANGAR_GRPC_TLS_CA, e.HANGAR_GRPC_TLS_CERT, e.HANGAR_GRPC_TLS_KEY];
  const tlsCount = tlsFiles.filter((f) => f !== undefined).length;
  if (tlsCount !== 0 && tlsCount !== 3) {
    throw new ConfigError([
      { variable: 'HANGAR_GRPC_TLS_*', message: 'set all of HANGAR_GRPC_TLS_CA, _CERT and _KEY, or none' },
    ]);
  }
  if (tlsCount === 0 && !e.HANGAR_GRPC_INSECURE) {
    throw new ConfigError([
      {
        variable: 'HANGAR_GRPC_TLS_*',
        message: 'agents need mTLS: set the TLS files or HANGAR_GRPC_INSECURE=true',
      },
    ]);
  }
  if (e.HANGAR_GRPC_INSECURE && !isLoopbackHost(e.HANGAR_GRPC_HOST)) {
    throw new ConfigError([
      {
        variable: 'HANGAR_GRPC_INSECURE',
        message: 'plaintext gRPC is only allowed on a loopback HANGAR_GRPC_HOST',
      },
    ]);
  }
  return {
    role: e.HANGAR_ROLE,
    databaseUrl: e.DATABASE_URL,
    databasePoolMax: e.HANGAR_DATABASE_POOL_MAX,
    redisUrl: e.REDIS_URL,
    redisPrefix: e.HANGAR_REDIS_PREFIX,
    http: {
      host: e.HANGAR_HTTP_HOST,
      port: e.HANGAR_HTTP_PORT,
      bodyLimitBytes: e.HANGAR_HTTP_BODY_LIMIT_BYTES,
      trustProxy: e.HANGAR_HTTP_TRUST_PROXY,
      accessLog: e.HANGAR_HTTP_ACCESS_LOG,
    },
    grpc: {
      host: e.HANGAR_GRPC_HOST,
      port: e.HANGAR_GRPC_PORT,
      tls:
        tlsCount === 3
          ? { ca: e.HANGAR_GRPC_TLS_CA!, cert: e.HANGAR_GRPC_TLS_CERT!, key: e.HANGAR_GRPC_TLS_KEY! }
          : undefined,
      insecure: e.HANGAR_GRPC_INSECURE,
    },
    logLevel: e.HANGAR_LOG_LEVEL,
    authCacheTtlMs: e.HANGAR_AUTH_CACHE_TTL_MS,
    idempotencyTtlMs: e.HANGAR_IDEMPOTENCY_TTL_HOURS * 3_600_000,
    shutdownTimeoutMs: e.HANGAR_SHUTDOWN_TIMEOUT_MS,
  };
}

/** Whether `host` is a loopback name or address (plaintext gRPC is refused anywhere else). */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(bare);
}
